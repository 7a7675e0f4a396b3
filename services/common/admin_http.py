"""A minimal HTTP/1.0 server for admin ports: enough for Prometheus scrapes, liveness probes and
small JSON status pages. Not for user traffic (the gateway serves that)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from http import HTTPStatus

# path (query string removed) → (status, content type, body)
Page = Callable[[str], tuple[int, str, bytes]]


async def serve(listen: str, page: Page) -> asyncio.Server:
    """Listen on `host:port` and answer every GET with `page(path)`."""
    host, _, port = listen.rpartition(":")

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            status, content_type, body = page(parts[1].split("?")[0] if len(parts) >= 2 else "")
            writer.write(
                f"HTTP/1.0 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(respond, host or "127.0.0.1", int(port))
