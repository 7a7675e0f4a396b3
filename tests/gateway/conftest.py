"""Fixtures of the gateway tests: a fake AuthService on a real grpc.aio server, gateways served by
uvicorn in-process on real sockets, and an httpx client.

Every server listens on a socket bound to port 0 before it starts, so nobody has to wait for it:
a connection made early just waits in the listen backlog until uvicorn accepts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import httpx
import pytest
import uvicorn
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc
from capsule.common.v1 import common_pb2
from google.protobuf import any_pb2, duration_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.settings import Settings


@dataclass
class Call:
    method: str
    request: Message
    metadata: dict[str, str]


@dataclass
class FakeAuth(auth_pb2_grpc.AuthServiceServicer):
    """Records every call; answers with canned data. Special inputs make it fail:

    - an email (SignUp) or refresh token (Refresh) `fail:<CODE>` aborts with that status code and
      rich details: ErrorInfo(reason=TEST_<CODE>), BadRequest on `first_name` and
      `user.first_name`, RetryInfo(2.5 s);
    - `plain:<CODE>` aborts with that code and no details, and a message naming an internal host;
    - `hang` waits forever (deadline tests);
    - `hold` sets `held` and waits for `release` (graceful shutdown tests).
    """

    calls: list[Call] = field(default_factory=list)
    never: asyncio.Event = field(default_factory=asyncio.Event)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def last(self, method: str) -> Call:
        return next(call for call in reversed(self.calls) if call.method == method)

    async def _enter(self, method: str, request: Message, context: grpc.aio.ServicerContext, trigger: str) -> None:
        self.calls.append(Call(method, request, {k: str(v) for k, v in context.invocation_metadata() or ()}))
        if trigger == "hang":
            await self.never.wait()
        if trigger == "hold":
            self.held.set()
            await self.release.wait()
        if trigger.startswith("fail:"):
            code = grpc.StatusCode[trigger.removeprefix("fail:")]
            await context.abort_with_status(rpc_status.to_status(rich_status(code, f"test failure {code.name}")))
        if trigger.startswith("plain:"):
            code = grpc.StatusCode[trigger.removeprefix("plain:")]
            await context.abort(code, "connect to 10.1.2.3:5432 failed: secret internals")

    async def SignUp(self, request: auth_pb2.SignUpRequest, context: grpc.aio.ServicerContext) -> auth_pb2.Session:
        await self._enter("SignUp", request, context, request.email)
        user = auth_pb2.User(
            id="0190a0b0-0000-7000-8000-000000000001",
            email=request.email,
            username=request.username,
            first_name=request.first_name,
            last_name=request.last_name,
            created_at=timestamp_pb2.Timestamp(seconds=1_900_000_000),
        )
        return auth_pb2.Session(user=user, access_token="access", refresh_token="refresh", expires_in=900)

    async def LogIn(self, request: auth_pb2.LogInRequest, context: grpc.aio.ServicerContext) -> auth_pb2.Session:
        await self._enter("LogIn", request, context, request.password)
        user = auth_pb2.User(email=request.email, username=request.username)
        return auth_pb2.Session(user=user, access_token="access", refresh_token="refresh", expires_in=900)

    async def Refresh(self, request: auth_pb2.RefreshRequest, context: grpc.aio.ServicerContext) -> auth_pb2.Session:
        await self._enter("Refresh", request, context, request.refresh_token)
        return auth_pb2.Session(access_token="access-2", refresh_token="refresh-2", expires_in=900)

    async def LogOut(self, request: auth_pb2.LogOutRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        await self._enter("LogOut", request, context, request.refresh_token)
        return empty_pb2.Empty()

    async def GetMe(self, request: auth_pb2.GetMeRequest, context: grpc.aio.ServicerContext) -> auth_pb2.User:
        await self._enter("GetMe", request, context, "")
        return auth_pb2.User(id="me", email="me@example.com", username="me")

    async def UpdateMe(self, request: auth_pb2.UpdateMeRequest, context: grpc.aio.ServicerContext) -> auth_pb2.User:
        await self._enter("UpdateMe", request, context, request.user.last_name)
        return request.user

    async def CheckUsername(
        self, request: auth_pb2.CheckUsernameRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CheckUsernameResponse:
        await self._enter("CheckUsername", request, context, "")
        return auth_pb2.CheckUsernameResponse(username=request.username, available=request.username != "taken")

    async def GetUsers(
        self, request: auth_pb2.GetUsersRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.GetUsersResponse:
        await self._enter("GetUsers", request, context, "")
        return auth_pb2.GetUsersResponse()

    async def SearchUsers(
        self, request: auth_pb2.SearchUsersRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.SearchUsersResponse:
        await self._enter("SearchUsers", request, context, request.query)
        users = [common_pb2.PublicProfile(id=f"u{i}", username=f"{request.query}{i}") for i in range(2)]
        return auth_pb2.SearchUsersResponse(users=users, next_page_token="next")


def rich_status(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    details = []
    for detail in (
        error_details_pb2.ErrorInfo(reason=f"TEST_{code.name}", domain="capsule-mesh"),
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="first_name", description="is too long"),
                error_details_pb2.BadRequest.FieldViolation(field="user.first_name", description="is required"),
                error_details_pb2.BadRequest.FieldViolation(field="ids[2]", description="must be a UUID"),
            ]
        ),
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000)),
    ):
        packed = any_pb2.Any()
        packed.Pack(detail)
        details.append(packed)
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[str]:
    """Serves `app` with uvicorn on a fresh port; yields its base URL; stops it (lifespan included)."""
    sock = bound_socket()
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture(scope="session")
def fake_auth() -> FakeAuth:
    return FakeAuth()


@pytest.fixture(scope="session")
async def upstream_target(fake_auth: FakeAuth) -> AsyncIterator[str]:
    server = grpc.aio.server()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(fake_auth, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    fake_auth.never.set()
    await server.stop(grace=None)


@pytest.fixture(scope="session")
async def fake_gateway_url(upstream_target: str) -> AsyncIterator[str]:
    """A gateway in front of the fake AuthService (not the whole mesh of tests/conftest.py)."""
    settings = Settings(upstream=upstream_target, call_timeout_seconds=5.0)
    async with serve(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="session")
async def api(fake_gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of that gateway."""
    async with httpx.AsyncClient(base_url=fake_gateway_url, timeout=10.0) as http:
        yield http


@pytest.fixture(scope="session")
def dead_target() -> Iterator[str]:
    """A port nobody listens on (bound, never listening: connections are refused)."""
    sock = bound_socket()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
