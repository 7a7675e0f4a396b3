"""The per-route policies `python -m gateway` serves with, outermost first: HttpCache (ETag, 304,
Cache-Control, Vary; a 429 gets no-store), then RateLimit (global GCRA in Redis, hot keys leased,
with a local fallback; left out when disabled). See gateway/calls.py for the shape.

Built from the settings and from what the served methods declare in their protos (Rpc.policy:
which GET answers are public or kept longer, which method is the log-in and which fields name its
account), so no path or RPC name is written here or in the policies.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from gateway.calls import Policy
from gateway.clientip import ClientIpResolver
from gateway.descriptors import HttpBinding, http_bindings, load_services
from gateway.httpcache import HttpCache, declared_caching
from gateway.ratelimit import Limit, Limits, RateLimit, RateLimiter
from gateway.settings import Settings
from services.common.tokens import AccessTokenVerifier, load_public_key

log = logging.getLogger(__name__)


def route_policies(
    settings: Settings, bindings: Sequence[HttpBinding] | None = None
) -> tuple[list[Policy], list[Callable[[], Awaitable[None]]]]:
    """(policies, coroutines to run at shutdown) for the routes of `bindings` (default: those of
    settings.proto_modules, as create_app loads them)."""
    if bindings is None:
        bindings = http_bindings(load_services(settings.proto_modules))
    policies: list[Policy] = [
        HttpCache(private_max_age=settings.cache_private_max_age, declared=declared_caching(bindings))
    ]
    closers: list[Callable[[], Awaitable[None]]] = []
    if not settings.ratelimit_enabled:
        log.warning("rate limiting is disabled (GATEWAY_RATELIMIT_ENABLED=0)")
        return policies, closers
    limiter = RateLimiter(
        settings.redis_url,
        settings.cache_prefix,
        timeout_seconds=settings.ratelimit_redis_timeout_seconds,
        backoff_seconds=settings.ratelimit_backoff_seconds,
        lease_max=settings.ratelimit_lease_max,
        lease_seconds=settings.ratelimit_lease_seconds,
    )
    closers.append(limiter.close)
    verifier = None
    if settings.jwt_public_key_file:
        verifier = AccessTokenVerifier(
            load_public_key(settings.jwt_public_key_file), issuer=settings.jwt_issuer, audience=settings.jwt_audience
        )
    else:
        log.warning("JWT_PUBLIC_KEY_FILE is not set: every call is rate limited by client IP")
    limits = Limits(
        ip=Limit("ip", *settings.ratelimit_ip),
        user=Limit("user", *settings.ratelimit_user),
        login=Limit("login", *settings.ratelimit_login),
    )
    resolver = ClientIpResolver(settings.trusted_proxies)
    policies.append(
        RateLimit(
            limiter=limiter,
            limits=limits,
            resolver=resolver,
            verifier=verifier,
            max_body_bytes=settings.max_body_bytes,
        )
    )
    return policies, closers
