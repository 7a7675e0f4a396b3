"""A minimal HTTP/1.0 server for admin ports: enough for Prometheus scrapes, liveness probes and
small JSON status pages. Not for user traffic (the gateway serves that)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from http import HTTPStatus

# path (query string removed) → (status, content type, body)
Page = Callable[[str], tuple[int, str, bytes]]


class AdminServer:
    """The listening socket and the connections being answered. `close()` returns once the port
    is closed and every connection has ended: `asyncio.Server.wait_closed()` alone does not wait
    for connections on Python 3.11 (it returns at once after close())."""

    def __init__(self, page: Page) -> None:
        self._page = page
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[object]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections being answered now."""
        return len(self._connections)

    async def start(self, host: str, port: int) -> AdminServer:
        self._server = await asyncio.start_server(self._respond, host, port)
        return self

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()  # no new connections from here on
        connections = list(self._connections)
        for task in connections:  # a page is answered in microseconds: only a slow client waits here
            task.cancel()
        if connections:
            await asyncio.wait(connections)
        await self._server.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that arrives
            # as the read completes, and close() would then wait out the whole 5 s.
            async with asyncio.timeout(5):
                request_line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request_line.decode("latin-1").split()
            status, content_type, body = self._page(parts[1].split("?")[0] if len(parts) >= 2 else "")
            writer.write(
                f"HTTP/1.0 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # close() ended the connection; asyncio would log a cancelled handler as an error
        finally:
            try:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            finally:
                self._connections.discard(task)


async def serve(listen: str, page: Page) -> AdminServer:
    """Listen on `host:port` and answer every GET with `page(path)`."""
    host, _, port = listen.rpartition(":")
    return await AdminServer(page).start(host or "127.0.0.1", int(port))
