"""Application-wide middleware: the request id and the last-resort error answer.

Every response carries `X-Request-Id`: the client's own when it sent a sane one, else a new
uuid4 hex. The id is forwarded upstream as `x-request-id` metadata and is in every log line
written while the request is served. An exception nothing else handled is logged with that id
and answered with a generic 500 problem: no internals leak to the client.

The transcoded API calls get the same from the gateway itself (app.py), without this middleware's
wrapping of `send`: it serves the operational routes and the router's own 404/405 answers.
"""

from __future__ import annotations

import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.logs import request_id_var
from gateway.problems import Problem

log = logging.getLogger(__name__)

REQUEST_ID_SCOPE_KEY = "gateway.request_id"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def request_id_of(scope: Scope) -> bytes:
    """The client's X-Request-Id when it is sane, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _SANE_REQUEST_ID.fullmatch(value):
                return bytes(value)
            break
    return uuid.uuid4().hex.encode()


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id_bytes = request_id_of(scope)
        request_id = request_id_bytes.decode()
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        token = request_id_var.set(request_id)
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id_bytes)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error serving %s %s", scope["method"], scope["path"])
            if response_started:
                raise
            await Problem.internal().response()(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
