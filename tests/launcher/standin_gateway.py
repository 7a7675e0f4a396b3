"""A stand-in gateway for the launcher's tests (`python -m tests.launcher.standin_gateway`).

GATEWAY_LISTEN: GET /readyz → 200; GET /probe → one gRPC call to
/<STANDIN_SERVICE>/GetMe through GATEWAY_UPSTREAM (Envoy; as the gateway workload over mutual TLS
when MESH_TLS_DIR is set, a method Envoy's RBAC lets the gateway call), answered with the
`x-instance` trailer of the instance that served it.
"""

from __future__ import annotations

import asyncio
import os

import grpc

from mesh.credentials import MeshTLS, open_channel
from mesh.pki import ENVOY

SERVICE = os.environ.get("STANDIN_SERVICE", "capsule.auth.v1.AuthService")


async def main() -> None:
    host, port = os.environ["GATEWAY_LISTEN"].rsplit(":", 1)
    channel = open_channel(os.environ["GATEWAY_UPSTREAM"], ENVOY, MeshTLS.from_env())
    probe = channel.unary_unary(f"/{SERVICE}/GetMe")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        path = head.split(" ", 2)[1]
        status, body = "404 Not Found", "not found\n"
        if path == "/readyz":
            status, body = "200 OK", "ready\n"
        elif path == "/probe":
            try:
                call = probe(b"", timeout=5)
                await call
                trailers = await call.trailing_metadata() or ()
                status, body = "200 OK", dict(trailers).get("x-instance", "?")
            except grpc.aio.AioRpcError as exc:
                status, body = "503 Service Unavailable", f"{exc.code().name}: {exc.details()}"
        data = body.encode()
        writer.write(f"HTTP/1.1 {status}\r\ncontent-length: {len(data)}\r\nconnection: close\r\n\r\n".encode() + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host, int(port))
    print(f"standin gateway on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
