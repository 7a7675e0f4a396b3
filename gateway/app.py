"""The Starlette application: descriptors → route table → proxy, plus the operational routes.

    RequestContextMiddleware   request id, last-resort 500            (middleware.py)
    MetricsMiddleware          requests and latency by route template (metrics.py)
    *middleware                application-wide seams (e.g. global rate limiting)
    Router
      /healthz /readyz /openapi.json /metrics                       (operations.py)
      TranscodedRoutes → *route_middleware → Proxy                  (routing.py, proxy.py)

`gateway.policies.route_policies(settings)` gives the route middleware `python -m gateway` serves
with: HTTP caching headers (httpcache.py) around rate limiting (ratelimit.py).

The upstream channels are opened in the lifespan (they need the running loop) and closed at
shutdown, after uvicorn has drained in-flight requests.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute

from gateway import operations
from gateway.clientip import ClientIpResolver, parse_networks
from gateway.descriptors import http_bindings, load_services
from gateway.metrics import MetricsMiddleware
from gateway.middleware import RequestContextMiddleware
from gateway.openapi import openapi_document
from gateway.problems import Problem
from gateway.proxy import Proxy
from gateway.routing import RouteTable, TranscodedRoutes
from gateway.settings import Settings
from gateway.upstream import Upstream

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    middleware: Sequence[Middleware] = (),
    route_middleware: Sequence[Middleware] = (),
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
) -> Starlette:
    settings = settings or Settings.from_env()
    bindings = http_bindings(load_services(settings.proto_modules))
    table = RouteTable(bindings)
    upstream = Upstream(settings, dict.fromkeys(b.rpc for b in bindings))
    client_ip = ClientIpResolver(parse_networks(settings.trusted_proxies))
    proxy = Proxy(table.routes, upstream, settings.max_body_bytes, client_ip)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await upstream.start()
        log.info("serving %d routes of %d RPCs", len(table.routes), len(upstream.rpcs))
        try:
            yield
        finally:
            await upstream.close(grace=1.0)
            for close in on_shutdown:
                await close()

    app = Starlette(
        routes=[
            StarletteRoute("/healthz", operations.healthz),
            StarletteRoute("/readyz", operations.readyz),
            StarletteRoute("/openapi.json", operations.openapi),
            StarletteRoute("/metrics", operations.metrics),
            TranscodedRoutes(table, proxy, route_middleware),
        ],
        middleware=[Middleware(RequestContextMiddleware), Middleware(MetricsMiddleware), *middleware],
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # an API answers 404 for /v1/me/, not a redirect
    app.state.settings = settings
    app.state.upstream = upstream
    app.state.openapi_json = orjson.dumps(openapi_document(table.routes))
    return app


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown path, wrong verb on an operational route) as problems."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return Problem.not_found(request.url.path).response()
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "").split(", ")
        return Problem.method_not_allowed(request.method, sorted(a for a in allowed if a)).response()
    return Problem(exc.status_code, "HTTP_ERROR", str(exc.detail)).response()
