"""The gateway's ASGI application: descriptors → route table → policies → proxy.

    Gateway                       every HTTP request is first looked up in the route table
      transcoded call  → request id, header check, *policies → Proxy, one reply, metrics   (calls.py, proxy.py)
      path of a route, other verb → 405 problem with Allow
      anything else    → Starlette: RequestContextMiddleware, MetricsMiddleware, *middleware,
                         /healthz /readyz /openapi.json /metrics, else 404     (operations.py)

The API calls, which are the load, take the short way: no Starlette router, no middleware
wrapping `send`; the policies (`gateway.policies.route_policies(settings)`: HTTP caching headers
around rate limiting) return a reply object that is written once. The operational routes keep
Starlette's conveniences.

The upstream channels are opened in the lifespan (they need the running loop) and closed at
shutdown, after uvicorn has drained in-flight requests.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import metrics, operations
from gateway.calls import Call, Next, Policy, Reply, chain, problem_reply
from gateway.clientip import ClientIpResolver
from gateway.descriptors import http_bindings, load_services
from gateway.headers import check_request_headers
from gateway.logs import request_id_var
from gateway.metrics import MetricsMiddleware
from gateway.middleware import RequestContextMiddleware, request_id_of
from gateway.openapi import openapi_document
from gateway.problems import Problem
from gateway.proxy import Proxy
from gateway.routing import MethodNotAllowed, RouteMatch, RouteTable, raw_path
from gateway.settings import Settings
from gateway.upstream import Upstream
from mesh.credentials import MeshTLS
from services.common import tracing

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    middleware: Sequence[Middleware] = (),
    policies: Sequence[Policy] = (),
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
    tls: MeshTLS | None = None,
) -> Gateway:
    """`tls`: the gateway's mesh identity; by default read from the environment (MESH_TLS_DIR, or
    plain text with the explicit MESH_PLAINTEXT=1: mesh/credentials.py)."""
    settings = settings or Settings.from_env()
    bindings = http_bindings(load_services(settings.proto_modules))
    table = RouteTable(bindings)
    upstream = Upstream(settings, dict.fromkeys(b.rpc for b in bindings), MeshTLS.from_env() if tls is None else tls)
    client_ip = ClientIpResolver(settings.trusted_proxies)
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

    operational = Starlette(
        routes=[
            StarletteRoute("/healthz", operations.healthz),
            StarletteRoute("/readyz", operations.readyz),
            StarletteRoute("/openapi.json", operations.openapi),
            StarletteRoute("/metrics", operations.metrics),
        ],
        middleware=[Middleware(RequestContextMiddleware), Middleware(MetricsMiddleware), *middleware],
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )
    operational.router.redirect_slashes = False  # an API answers 404 for /v1/me/, not a redirect
    operational.state.settings = settings
    operational.state.upstream = upstream
    operational.state.openapi_json = orjson.dumps(openapi_document(table.routes))
    # The header check first: a refusal there costs no rate-limit cell (gateway/headers.py).
    return Gateway(table, chain([check_request_headers, *policies], proxy), operational)


class Gateway:
    """The ASGI entry point (see the module doc)."""

    def __init__(self, table: RouteTable, handler: Next, operational: Starlette) -> None:
        self.table = table
        self.handler = handler
        self.operational: ASGIApp = operational
        self.state = operational.state  # settings, upstream: what tests and operations read

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = self.table.resolve(scope["method"], raw_path(scope))
            if found is not None:
                if tracing.active():
                    # The request's SERVER span, continuing the client's W3C trace context.
                    route = found.route.binding.template if isinstance(found, RouteMatch) else None
                    with tracing.http_server_span(scope, route):
                        await self._serve(scope, found, receive, send)
                else:
                    await self._serve(scope, found, receive, send)
                return
        await self.operational(scope, receive, send)

    async def _serve(self, scope: Scope, found: RouteMatch | MethodNotAllowed, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = request_id_of(scope)
        context = request_id_var.set(request_id.decode())
        route, status = metrics.UNMATCHED, 500
        try:
            if isinstance(found, MethodNotAllowed):
                reply = problem_reply(Problem.method_not_allowed(scope["method"], found.allowed))
            else:
                route = found.route.binding.template
                reply = await self._reply(Call(scope, found, request_id, receive))
            status = reply.status
            headers = reply.headers
            if status != 304:
                headers.append((b"content-length", b"%d" % len(reply.body)))
            headers.append((b"x-request-id", request_id))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": reply.body})
        finally:
            elapsed = time.perf_counter() - started
            metrics.record(scope, route, status, elapsed)
            # A sampled request leaves one line with its trace and span ids (services/common/tracing.py).
            if tracing.recording():
                tracing.record_http_status(status)
                log.info(
                    "request served",
                    extra={"fields": {"route": route, "status": status, "duration_ms": round(elapsed * 1000, 3)}},
                )
            request_id_var.reset(context)

    async def _reply(self, call: Call) -> Reply:
        try:
            return await self.handler(call)
        except Exception:
            # The last resort: logged with the request id, answered without internals.
            log.exception("unhandled error serving %s %s", call.method, call.path)
            return problem_reply(Problem.internal())


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown path, wrong verb on an operational route) as problems."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return Problem.not_found(request.url.path).response()
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "").split(", ")
        return Problem.method_not_allowed(request.method, sorted(a for a in allowed if a)).response()
    return Problem(exc.status_code, "HTTP_ERROR", str(exc.detail)).response()
