"""JSON logs, one object per line on stderr, carrying the request and trace ids of the call being
served. Used by every service and by the gateway.

The trace and span ids are those of the active OpenTelemetry span when tracing is on
(services/common/tracing.py installs the look-up with `use_span_ids`); otherwise the trace id is
the one of the incoming `traceparent` (`trace_id_var`, set by the server's handler wrapper)."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Callable

import orjson

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
trace_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="")
# (trace id, span id) of the active span, None outside one; None itself while tracing is off.
_span_ids: Callable[[], tuple[str, str] | None] | None = None


def use_span_ids(lookup: Callable[[], tuple[str, str] | None] | None) -> None:
    """Take every line's trace and span ids from `lookup` (the active span's), falling back to
    `trace_id_var` outside a span; None: `trace_id_var` only."""
    global _span_ids
    _span_ids = lookup


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        ids = _span_ids() if _span_ids is not None else None
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        elif trace_id := trace_id_var.get():
            entry["trace_id"] = trace_id
        # Structured context: log.info("...", extra={"fields": {...}})
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def trace_id_from_traceparent(traceparent: str) -> str:
    """The trace id of a W3C `traceparent` header value (version-traceid-parentid-flags)."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""
