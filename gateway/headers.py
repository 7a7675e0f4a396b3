"""The request headers a transcoded call forwards upstream, checked before anything else (SPEC §3, §7).

The first policy of every route (app.py), so a refusal costs no rate-limit cell and no upstream call:
- `Authorization` and `Idempotency-Key` come at most once: with two, the rate limiter and the
  upstream call could each act on a different one. Two or more: 400 DUPLICATE_HEADER.
- Every header forwarded as gRPC metadata has a longest value (MAX_LENGTHS), so the call's metadata
  stays well under gRPC's 8 KiB soft limit, past which the channel refuses the call
  (RESOURCE_EXHAUSTED, which would read as a 429 with gRPC's own message). Longer: 400
  HEADER_TOO_LONG naming the header. An access token is about 400 bytes; an idempotency key is a
  client's UUID or similar, 255 characters at most.
The trace headers are best effort: longer than theirs (upstream.MAX_TRACE_LENGTHS), they are left
out of the call rather than failing it (W3C trace context lets a hop drop what it cannot carry).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.calls import Call, Next, Reply
from gateway.problems import Problem

SINGLE: Mapping[bytes, str] = {b"authorization": "Authorization", b"idempotency-key": "Idempotency-Key"}
MAX_LENGTHS: Mapping[bytes, int] = {b"authorization": 4096, b"idempotency-key": 255}


async def check_request_headers(call: Call, next: Next) -> Reply:
    """The policy (gateway/calls.py): a Problem for a repeated or over-long forwarded header."""
    seen: set[bytes] = set()
    for name, value in call.scope["headers"]:
        if name in SINGLE:
            if name in seen:
                raise Problem(400, "DUPLICATE_HEADER", f"The {SINGLE[name]} header must be sent at most once.")
            seen.add(name)
            if len(value) > MAX_LENGTHS[name]:
                raise Problem(
                    400, "HEADER_TOO_LONG", f"The {SINGLE[name]} header is longer than {MAX_LENGTHS[name]} bytes."
                )
    return await next(call)
