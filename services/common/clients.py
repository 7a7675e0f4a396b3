"""gRPC channels to other services (through Envoy): created once, reused for every call."""

from __future__ import annotations

import grpc

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Envoy owns retries (with a budget); client-side retries would multiply them.
    ("grpc.enable_retries", 0),
]


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def forward_metadata(token: str, request_id: str = "") -> tuple[tuple[str, str], ...]:
    """Metadata for a call made on a user's behalf: their token, and the request id to correlate logs."""
    metadata: list[tuple[str, str]] = [("authorization", f"Bearer {token}")]
    if request_id:
        metadata.append(("x-request-id", request_id))
    return tuple(metadata)
