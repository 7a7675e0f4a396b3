"""`python -m gateway`: serve the gateway with uvicorn (uvloop + httptools) until SIGTERM.

On SIGTERM uvicorn stops accepting, lets in-flight requests finish (up to
GATEWAY_SHUTDOWN_GRACE_SECONDS), then the lifespan closes the upstream channels; exit code 0
(uvicorn re-raises the signal once it is done: the handler below turns it into a normal exit).
uvicorn's own X-Forwarded-For handling is off (proxy_headers=False; it would trust 127.0.0.1 by
default): the client IP is the socket peer's unless the peer is one of GATEWAY_TRUSTED_PROXIES
(gateway/clientip.py), so no client picks its own rate-limit key by sending a header.
The HTTP protocol is uvicorn's httptools one with the protocol limits of gateway/connections.py
(connection cap, request-head deadline, head size and header count; GATEWAY_MAX_* settings).
With OTEL_EXPORTER_OTLP_ENDPOINT set, every API request gets an HTTP server span and its upstream
call a gRPC client span (services/common/tracing.py); the spans still buffered are exported at
shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
import signal
import sys
from types import FrameType

import uvicorn

from gateway.app import create_app
from gateway.connections import ProtocolLimits, limited_protocol
from gateway.descriptors import DescriptorError
from gateway.logs import configure_logging
from gateway.policies import route_policies
from gateway.settings import Settings
from gateway.templates import TemplateError
from services.common import tracing


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    # Before anything connects: the Redis instrumentation patches its clients (rate limits).
    tracing.setup("gateway", grpc_client=False)  # its client spans: gateway/upstream.py
    try:
        policies, closers = route_policies(settings)
        closers = [*closers, lambda: asyncio.to_thread(tracing.shutdown)]  # last: after the channels
        app = create_app(settings, policies=policies, on_shutdown=closers)
    except (DescriptorError, TemplateError) as exc:
        raise SystemExit(f"gateway: cannot serve the configured protos: {exc}") from None
    limits = ProtocolLimits(
        max_connections=_connections_the_fd_limit_allows(settings.max_connections),
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        header_timeout_seconds=settings.header_timeout_seconds,
    )
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        loop="uvloop",
        http=limited_protocol(limits),  # httptools with the protocol limits (gateway/connections.py)
        lifespan="on",
        log_config=None,
        log_level=settings.log_level.lower(),
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
        # uvicorn declares an int but only hands it to loop.call_later: fractions work.
        timeout_keep_alive=settings.keepalive_timeout_seconds,  # type: ignore[arg-type]
    )


# Descriptors the gateway needs besides its clients' connections: its channels to the mesh, Redis,
# log files, the listening socket, Python's own files.
_FD_RESERVE = 256


def _connections_the_fd_limit_allows(wanted: int) -> int:
    """The connection cap, with the open-file limit raised to the hard limit so that it can be
    held (the default cap needs ~13,000 descriptors; many machines start processes with a soft
    limit of 1,024); lowered, with a warning, when even the hard limit is too small for it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft == resource.RLIM_INFINITY or wanted + _FD_RESERVE <= soft:
        return wanted
    allowed = max(1, soft - _FD_RESERVE)
    logging.getLogger(__name__).warning(
        "connection cap lowered to what the open-file limit allows",
        extra={"fields": {"wanted": wanted, "allowed": allowed, "nofile_limit": soft}},
    )
    return allowed


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


if __name__ == "__main__":
    main()
