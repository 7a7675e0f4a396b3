"""The per-route policies `python -m gateway` serves with, built from the settings, outermost
first: HttpCacheMiddleware (ETag, 304, Cache-Control, Vary; a 429 gets no-store), then
RateLimitMiddleware (global GCRA in Redis, hot keys leased, with a local fallback; left out when
disabled).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.middleware import Middleware

from gateway.clientip import ClientIpResolver, parse_networks
from gateway.httpcache import HttpCacheMiddleware
from gateway.ratelimit import Limit, Limits, RateLimiter, RateLimitMiddleware
from gateway.settings import Settings
from services.common.tokens import AccessTokenVerifier, load_public_key

log = logging.getLogger(__name__)


def route_policies(settings: Settings) -> tuple[list[Middleware], list[Callable[[], Awaitable[None]]]]:
    """(route middleware, coroutines to run at shutdown)."""
    middleware = [Middleware(HttpCacheMiddleware, private_max_age=settings.cache_private_max_age)]
    closers: list[Callable[[], Awaitable[None]]] = []
    if not settings.ratelimit_enabled:
        log.warning("rate limiting is disabled (GATEWAY_RATELIMIT_ENABLED=0)")
        return middleware, closers
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
    resolver = ClientIpResolver(parse_networks(settings.trusted_proxies))
    middleware.append(
        Middleware(RateLimitMiddleware, limiter=limiter, limits=limits, resolver=resolver, verifier=verifier)
    )
    return middleware, closers
