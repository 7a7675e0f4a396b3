"""Prometheus metrics of the HTTP side: requests by route template, method and status; latency.

Routes are labelled by template (`/v1/usernames/{username}`), never by the raw path, and unknown
paths and methods share one label value, so a scanner cannot blow up the series count. The same
middleware writes the access log, one JSON line per request, at DEBUG level (LOG_LEVEL=debug):
at thousands of requests a second, errors are what the default level keeps.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "gateway_http_requests_total", "HTTP requests answered by the gateway", ["route", "method", "status"]
)
LATENCY = Histogram(
    "gateway_http_request_duration_seconds",
    "Time from the request's arrival to the end of the response",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

access_log = logging.getLogger("gateway.access")

UNMATCHED = "unmatched"
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    if isinstance(route, StarletteRoute):
        return route.path
    return UNMATCHED


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            record(scope, route_label(scope), status, time.perf_counter() - started)


def record(scope: Scope, route: str, status: int, elapsed: float) -> None:
    """Count one answered request (and write its access-log line at DEBUG)."""
    method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
    _requests(route, method, status).inc()
    _latency(route, method).observe(elapsed)
    if access_log.isEnabledFor(logging.DEBUG):
        # A path holding a capability token (a share's, an invite's: whoever has it may read or
        # claim) is logged as its route template: logs are read by more people than tokens are.
        path = route if "{token}" in route else scope["path"]
        fields = {"method": scope["method"], "path": path, "route": route, "status": status}
        access_log.debug("request", extra={"fields": {**fields, "duration_ms": round(elapsed * 1000, 3)}})


# Label look-ups are cached: prometheus_client's labels() costs more than the increment itself. The
# label values are bounded (route templates, known methods, statuses), so the caches are too.
@functools.cache
def _requests(route: str, method: str, status: int) -> Any:
    return REQUESTS.labels(route, method, str(status))


@functools.cache
def _latency(route: str, method: str) -> Any:
    return LATENCY.labels(route, method)
