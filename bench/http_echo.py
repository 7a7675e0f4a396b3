"""The HTTP baseline: the gateway's HTTP server stack (uvicorn on uvloop with httptools, the same
options as gateway/__main__.py) serving a bare ASGI callable that answers every request with a
canned small JSON user, doing no work. Measured beside GET /v1/me, it shows what the gateway itself
(Starlette, middleware, rate limiter, transcoding, the gRPC hop) adds to an HTTP answer.

    python -m bench.http_echo HOST:PORT
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvicorn

CANNED = orjson.dumps(
    {
        "id": "00000000-0000-7000-8000-000000000000",
        "email": "echo@example.com",
        "username": "echo",
        "firstName": "Echo",
        "lastName": "Baseline",
        "country": "FR",
        "createdAt": "2025-01-01T00:00:00Z",
        "updatedAt": "2025-01-01T00:00:00Z",
    }
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(CANNED)).encode())]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": CANNED})


def main(listen: str) -> None:
    host, _, port = listen.rpartition(":")
    uvicorn.run(
        app,
        host=host,
        port=int(port),
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main(sys.argv[1])
