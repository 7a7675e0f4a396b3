"""The gateway's own endpoints: liveness, readiness, the OpenAPI document and metrics."""

from __future__ import annotations

import logging

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from gateway.problems import Problem
from gateway.upstream import Upstream

log = logging.getLogger(__name__)

_OK = b'{"status":"ok"}'


async def healthz(request: Request) -> Response:
    """200 for as long as the process serves HTTP."""
    return Response(_OK, media_type="application/json")


async def readyz(request: Request) -> Response:
    """200 once every upstream channel is connected, else 503 (the targets go to the log only)."""
    upstream: Upstream = request.app.state.upstream
    not_ready = await upstream.not_ready(request.app.state.settings.ready_timeout_seconds)
    if not_ready:
        log.warning("not ready: no connection to %s", ", ".join(not_ready))
        return Problem.not_ready().response()
    return Response(_OK, media_type="application/json")


async def openapi(request: Request) -> Response:
    return Response(request.app.state.openapi_json, media_type="application/json")


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
