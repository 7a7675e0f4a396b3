"""JSON logs that carry the request id, and the Prometheus metrics every service exports."""

from __future__ import annotations

import contextvars
import logging
import sys
import time

import orjson
from prometheus_client import Counter, Gauge, Histogram

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
trace_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="")

# RED metrics per RPC (rate, errors, duration).
RPC_REQUESTS = Counter("grpc_server_handled_total", "RPCs handled", ["service", "method", "code"])
RPC_LATENCY = Histogram(
    "grpc_server_handling_seconds",
    "RPC handling time",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CACHE_REQUESTS = Counter("cache_requests_total", "Cache look-ups", ["cache", "result"])
CACHE_ERRORS = Counter("cache_errors_total", "Redis errors seen by the cache (served from the database)")
DB_POOL_CHECKED_OUT = Gauge("db_pool_checked_out", "Connections checked out of the pool", ["role"])
DB_POOL_WAIT = Histogram(
    "db_pool_wait_seconds",
    "Time to get a connection from the pool",
    ["role"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)


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
        trace_id = trace_id_var.get()
        if trace_id:
            entry["trace_id"] = trace_id
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
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
