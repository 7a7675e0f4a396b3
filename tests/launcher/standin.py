"""A stand-in service that follows the service process contract, for the launcher's own tests.

    python -m tests.launcher.standin            # serve
    python -m tests.launcher.standin migrate    # create the database of DATABASE_URL if missing

Serves grpc.health.v1 (SERVING for STANDIN_SERVICE and ""), answers every method of
STANDIN_SERVICE with an empty message and an `x-instance: <GRPC_LISTEN>` trailer (so a test sees
which instance answered), and /healthz on ADMIN_LISTEN. With MESH_TLS_DIR (identity.pem, ca.pem of
the workload it stands in for) it serves mutual TLS like a real service and adds an `x-caller`
trailer: the caller's workload as mesh/credentials.py's caller_workload names it (through Envoy:
from x-forwarded-client-cert), and `x-xfcc`: that header as received; without, plain text as
before. SIGTERM: NOT_SERVING, deregister, wait
DEREGISTERED_DRAIN_SECONDS once the control plane confirmed it (else DRAIN_DELAY_SECONDS), stop
with SHUTDOWN_GRACE_SECONDS, exit 0.
Fault switches: STANDIN_EXIT_AT_START=<code> exits at once; STANDIN_UNAVAILABLE=1 answers every
call with UNAVAILABLE while reporting SERVING (a broken instance that passes health checks).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mesh.credentials import MeshTLS, add_port, caller_workload

SERVICE = os.environ.get("STANDIN_SERVICE", "capsule.auth.v1.AuthService")


def _split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


async def migrate() -> None:
    import asyncpg

    url = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    base, name = url.rsplit("/", 1)
    conn = await asyncpg.connect(f"{base}/postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    print(f"standin: database {name} ready", flush=True)


class Answer(grpc.GenericRpcHandler):
    def __init__(self, instance: str, tls: bool = False) -> None:
        self.instance = instance
        self.tls = tls
        self.unavailable = os.environ.get("STANDIN_UNAVAILABLE") == "1"

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        if not handler_call_details.method.startswith(f"/{SERVICE}/"):
            return None

        async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            trailers = [("x-instance", self.instance)]
            if self.tls:
                xfcc = dict(context.invocation_metadata() or ()).get("x-forwarded-client-cert", "-")
                trailers += [("x-caller", caller_workload(context) or "-"), ("x-xfcc", str(xfcc))]
            context.set_trailing_metadata(tuple(trailers))
            if self.unavailable:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.instance} is broken")
            return b""

        return grpc.unary_unary_rpc_method_handler(answer)


async def admin_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
    await writer.drain()
    writer.close()


async def serve() -> None:
    code = os.environ.get("STANDIN_EXIT_AT_START")
    if code:
        print(f"standin: exiting at start with code {code} as asked", flush=True)
        sys.exit(int(code))
    listen = os.environ["GRPC_LISTEN"]
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    tls_dir = os.environ.get("MESH_TLS_DIR")
    server.add_generic_rpc_handlers((Answer(listen, tls=bool(tls_dir)),))
    add_port(server, listen, MeshTLS(Path(tls_dir)) if tls_dir else None)
    admin_host, admin_port = _split(os.environ["ADMIN_LISTEN"])
    admin = await asyncio.start_server(admin_http, admin_host, admin_port)
    await server.start()
    for name in (SERVICE, ""):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"standin: serving {SERVICE} on {listen}", flush=True)
    registrar = None
    if os.environ.get("CONTROL_PLANE_TARGET"):
        # Registers like a real service (services/common/registration.py) when the stack runs a
        # control plane.
        from capsule.mesh.v1 import registry_pb2

        from services.common.registration import Registrar

        host, port = _split(listen)
        # Under the name of the topology entry it stands in for (the tests' replace(AUTH, ...)).
        instance = registry_pb2.ServiceInstance(service="auth", host=host, port=port)
        registrar = Registrar(
            os.environ["CONTROL_PLANE_TARGET"], instance, tls=MeshTLS(Path(tls_dir)) if tls_dir else None
        )
        registrar.start()

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    await stopping.wait()
    print("standin: SIGTERM: NOT_SERVING, draining", flush=True)
    await servicer.enter_graceful_shutdown()
    drained = False
    if registrar is not None:
        drained = await registrar.deregister()
        await registrar.close()
    # The real services' order (services/common/server.py): once every Envoy confirmed the
    # endpoint set without this instance, a short drain covers calls already on the wire;
    # otherwise the health checks must notice NOT_SERVING first.
    drain = "DEREGISTERED_DRAIN_SECONDS" if drained else "DRAIN_DELAY_SECONDS"
    await asyncio.sleep(float(os.environ.get(drain) or (0.25 if drained else 0)))
    await server.stop(float(os.environ.get("SHUTDOWN_GRACE_SECONDS") or 5))
    admin.close()
    print("standin: stopped", flush=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    asyncio.run(migrate() if command == "migrate" else serve())
