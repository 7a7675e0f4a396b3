"""HTTP caching headers of the transcoded API (SPEC §7).

- A 200 answer to GET carries a strong `ETag`: a hash (BLAKE2b, 128 bits, base64url) of the exact
  body bytes, so equal bodies give equal tags on every gateway and any change of data changes it.
- `If-None-Match` (a list of tags, weak ones compared by their opaque part as RFC 9110 §13.1.2
  says, or `*`) matching the body's tag → `304 Not Modified` with no body, keeping ETag,
  Cache-Control and Vary. The upstream call is still made: the tag is of the answer itself, so it
  can never be stale; what 304 saves is the transfer (and the client's parsing).
- `Cache-Control` of a GET: what the route's method declares in its proto
  (`option (capsule.common.v1.http_cache)`, read at start-up: the themes are `public,
  max-age=3600`, the same for everyone; a user search `private, max-age=30`, the search service
  cache's own TTL, so a result may already be that old); any other GET is user data that a shared
  cache must not keep: `private, max-age=GATEWAY_CACHE_PRIVATE_MAX_AGE` (default 0: a client
  revalidates each time with If-None-Match, so it never shows its profile as it was before its
  own PATCH). Errors and non-GET answers: `no-store`.
- `Vary: Authorization` on every answer: the same URL means different data per caller.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping

from gateway.calls import Call, Next, Reply
from gateway.descriptors import HttpBinding, http_bindings
from mesh.catalog import HttpCaching, mesh_services

_VARY = (b"vary", b"Authorization")
_NO_STORE = (b"cache-control", b"no-store")
# Headers a 304 does not repeat (it has no body).
_BODY_HEADERS = frozenset((b"content-length", b"content-type", b"content-encoding", b"transfer-encoding"))


def cache_control(caching: HttpCaching) -> str:
    return f"{'public' if caching.public else 'private'}, max-age={caching.max_age_seconds}"


def declared_caching(bindings: Iterable[HttpBinding]) -> dict[str, HttpCaching]:
    """Route template → the caching its method declares, for every GET route whose method does
    (a template is one route per verb: the route table refuses two of the same shape)."""
    return {
        binding.template: binding.rpc.policy.http_cache
        for binding in bindings
        if binding.verb == "GET" and binding.rpc.policy.http_cache is not None
    }


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
    """The policy (gateway/calls.py): marks every reply; answers 304 when the client has it.

    `declared`: route template → the caching its method declares (`declared_caching` of the routes
    served); by default, what the methods of every service of the mesh declare."""

    def __init__(self, *, private_max_age: int = 0, declared: Mapping[str, HttpCaching] | None = None) -> None:
        if declared is None:
            declared = declared_caching(http_bindings(mesh_services()))
        self._undeclared = b"private, max-age=%d" % private_max_age
        self._declared = {template: cache_control(caching).encode() for template, caching in declared.items()}

    def cache_control(self, call: Call) -> bytes:
        return self._declared.get(call.match.route.binding.template, self._undeclared)

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
