"""SPEC §10, primary down: writes fail fast with UNAVAILABLE and a clear message, and the service
recovers by itself when the database returns — no restart.

An extra auth instance reaches Postgres through a TCP relay this test owns; cutting the relay
(closing every relayed connection and refusing new ones) is the primary going away."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import grpc
import pytest
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc
from sqlalchemy.engine import make_url

from launcher.process import free_port
from launcher.stack import Stack
from mesh.topology import AUTH


class Relay:
    """A TCP relay to Postgres that can be cut and restored on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()
        self.server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self.writers -= {writer, upstream_writer}


def sign_up_request() -> auth_pb2.SignUpRequest:
    name = "pd" + uuid.uuid4().hex[:10]
    return auth_pb2.SignUpRequest(email=f"{name}@example.com", username=name, password="correct horse battery")


async def test_writes_fail_fast_while_the_primary_is_down_and_recover_without_restart(stack: Stack) -> None:
    database = make_url(stack.database_urls["auth"])
    relay = Relay(database.host or "127.0.0.1", database.port or 5432)
    await relay.start()
    address = f"127.0.0.1:{free_port()}"
    env = stack.service_env(stack.instances["auth"][0])
    env.update(
        GRPC_LISTEN=address,
        ADMIN_LISTEN=f"127.0.0.1:{free_port()}",
        DATABASE_URL=database.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False),
        CONTROL_PLANE_TARGET="",  # reached directly, not through Envoy
    )
    process = await asyncio.to_thread(
        stack.spawn,
        f"auth-primary-down-{uuid.uuid4().hex[:6]}",
        [stack.settings.python, "-m", "services.auth"],
        env=env,
        ready=stack.health_probe(address, AUTH),
    )
    try:
        async with stack.channel_to(address, AUTH.name) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            await stub.SignUp(sign_up_request(), timeout=10)

            await relay.cut()
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SignUp(sign_up_request(), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "database" in (caught.value.details() or "")
            # Fast: bounded by the connect timeout (DB_CONNECT_TIMEOUT_SECONDS, 3 s), not by the
            # call's 30 s deadline or asyncpg's 60 s default.
            assert time.monotonic() - started < 15

            await relay.start()
            deadline = time.monotonic() + 30
            while True:
                try:
                    await stub.SignUp(sign_up_request(), timeout=10)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    assert time.monotonic() < deadline, "no recovery within 30 s"
                    await asyncio.sleep(0.2)
    finally:
        await asyncio.to_thread(process.stop)
        if relay.server is not None:
            await relay.cut()
