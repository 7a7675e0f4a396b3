"""HTTP caching headers of the transcoded API (SPEC §7).

- A 200 answer to GET carries a strong `ETag`: a hash (BLAKE2b, 128 bits, base64url) of the exact
  body bytes, so equal bodies give equal tags on every gateway and any change of data changes it.
- `If-None-Match` (a list of tags, weak ones compared by their opaque part as RFC 9110 §13.1.2
  says, or `*`) matching the body's tag → `304 Not Modified` with no body, keeping ETag,
  Cache-Control and Vary. The upstream call is still made: the tag is of the answer itself, so it
  can never be stale; what 304 saves is the transfer (and the client's parsing).
- `Cache-Control`: `public, max-age=3600` under /v1/themes (the same for everyone);
  `private, max-age=N` on every other GET (user data; a shared cache must not keep it), N per
  route template: /v1/users:search 30 s (the search service cache's own TTL: a result may already
  be that old), everything else GATEWAY_CACHE_PRIVATE_MAX_AGE (default 0: a client revalidates
  each time with If-None-Match, so it never shows its profile as it was before its own PATCH).
  Errors and non-GET answers: `no-store`.
- `Vary: Authorization` on every answer: the same URL means different data per caller.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

from gateway.calls import Call, Next, Reply

PUBLIC_PREFIXES = ("/v1/themes",)
PUBLIC_MAX_AGE = 3600
# Route template → max-age of its private GET answers (others: the configured default).
PRIVATE_MAX_AGES: Mapping[str, int] = {"/v1/users:search": 30}

_VARY = (b"vary", b"Authorization")
_NO_STORE = (b"cache-control", b"no-store")
# Headers a 304 does not repeat (it has no body).
_BODY_HEADERS = frozenset((b"content-length", b"content-type", b"content-encoding", b"transfer-encoding"))


def strong_etag(body: bytes) -> bytes:
    digest = hashlib.blake2b(body, digest_size=16).digest()
    return b'"' + base64.urlsafe_b64encode(digest).rstrip(b"=") + b'"'


def if_none_match_matches(header: bytes, etag: bytes) -> bool:
    """RFC 9110 weak comparison, as If-None-Match uses: W/"x" matches "x"; `*` matches anything."""
    for candidate in header.split(b","):
        candidate = candidate.strip()
        if candidate == b"*":
            return True
        if candidate.startswith(b"W/"):
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


class HttpCache:
    """The policy (gateway/calls.py): marks every reply; answers 304 when the client has it."""

    def __init__(self, *, private_max_age: int = 0) -> None:
        self.private_max_age = private_max_age

    def cache_control(self, call: Call) -> bytes:
        if call.path.startswith(PUBLIC_PREFIXES):
            return b"public, max-age=%d" % PUBLIC_MAX_AGE
        template = call.match.route.binding.template
        return b"private, max-age=%d" % PRIVATE_MAX_AGES.get(template, self.private_max_age)

    async def __call__(self, call: Call, next: Next) -> Reply:
        reply = await next(call)
        if call.method != "GET" or reply.status != 200:
            reply.headers += (_NO_STORE, _VARY)
            return reply
        etag = strong_etag(reply.body)
        extra = [(b"etag", etag), (b"cache-control", self.cache_control(call)), _VARY]
        condition = call.header_values(b"if-none-match")
        if condition and if_none_match_matches(b",".join(condition), etag):
            headers = [(k, v) for k, v in reply.headers if k not in _BODY_HEADERS]
            return Reply(304, [*headers, *extra], b"")
        reply.headers += extra
        return reply
