"""gRPC channels to other services (through Envoy): created once, reused for every call (a new one
only when this process's certificate rotates: mesh.credentials.MeshChannel), the deadline of a
call made while serving one: the caller's remaining time, never more, and its trace context."""

from __future__ import annotations

import contextvars
import time

from mesh.credentials import MeshChannel, MeshTLS
from mesh.pki import ENVOY
from services.common import tracing

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Envoy owns retries (with a budget); client-side retries would multiply them.
    ("grpc.enable_retries", 0),
]


def channel(target: str, tls: MeshTLS | None) -> MeshChannel:
    """A channel to Envoy's listener at `target`, where every call between services goes: mutual
    TLS as this workload (Envoy checked by its certificate), or plain text when `tls` is None."""
    return MeshChannel(target, ENVOY, tls, CHANNEL_OPTIONS)


# The W3C trace context (traceparent, tracestate) of the call being served, set by the server's
# handler wrapper; passed on as it came while tracing is off (with tracing on, the gRPC client
# instrumentation injects the context of the call's own span instead).
incoming_trace_context: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "incoming_trace_context", default=()
)


def forward_metadata(token: str | None, request_id: str = "") -> tuple[tuple[str, str], ...]:
    """Metadata for a call made on a user's behalf: their token (None: a call the workload makes
    on its own authority, as a background job does), the request id to correlate logs, and the
    trace context of the call being served (while tracing is off, see above)."""
    metadata: list[tuple[str, str]] = [("authorization", f"Bearer {token}")] if token is not None else []
    if request_id:
        metadata.append(("x-request-id", request_id))
    if not tracing.active():
        metadata.extend(incoming_trace_context.get())
    return tuple(metadata)


# When the call this task is serving must be answered (time.monotonic()), set by the server's
# handler wrapper from the incoming deadline; None outside a call or for a call without one.
serving_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("serving_deadline", default=None)
# Below this, a call to another service is not worth starting: it fails at once instead.
_MIN_TIMEOUT_SECONDS = 0.001


def call_timeout(ceiling: float) -> float:
    """The timeout of a call to another service: `ceiling` (the service's own bound), shortened to
    what is left of the deadline of the call being served, so no work outlives its caller."""
    deadline = serving_deadline.get()
    if deadline is None:
        return ceiling
    return max(_MIN_TIMEOUT_SECONDS, min(ceiling, deadline - time.monotonic()))
