"""Issue 11, findings 11, 9 and 1 through the real mesh: log-out ends the access token in every
service within 2 s; a validly signed token for an account that does not exist is refused by every
service; log-in failures are limited by the auth service itself, over gRPC through Envoy too,
before any Argon2 run."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import grpc
import httpx
import redis.asyncio as redis
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from launcher.process import free_port
from launcher.stack import Stack
from services.auth.login_limits import LoginLimits, LoginLimitSettings
from services.common.addresses import parse_networks
from tests.auth.test_auth_http import PASSWORD, assert_problem, bearer, mint, sign_up, unique
from tests.metrics import summed

# What each service answers for its caller: auth, recipients, capsules.
EVERY_SERVICE = ("/v1/me", "/v1/recipients", "/v1/capsules?box=outbox")


async def statuses(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, httpx.Response]:
    responses = await asyncio.gather(*(client.get(path, headers=headers) for path in EVERY_SERVICE))
    return dict(zip(EVERY_SERVICE, responses, strict=True))


# --- finding 11: log-out ends the session -------------------------------------------------------------


async def test_log_out_ends_the_access_token_in_every_service_within_2_s(client: httpx.AsyncClient) -> None:
    session = await sign_up(client)
    other = (await client.post("/v1/auth:login", json={"email": session["user"]["email"], "password": PASSWORD})).json()
    # Every service has verified (and cached) the token before the log-out.
    for path, response in (await statuses(client, bearer(session))).items():
        assert response.status_code == 200, (path, response.text)

    out = await client.post("/v1/auth:logout", json={"refreshToken": session["refreshToken"]})
    assert out.status_code == 200
    deadline = time.monotonic() + 2.0
    while True:
        answers = await statuses(client, bearer(session))
        if all(r.status_code == 401 for r in answers.values()) or time.monotonic() > deadline:
            break
    for response in answers.values():
        assert_problem(response, 401, "SESSION_ENDED")
    # The account's other session goes on.
    for path, response in (await statuses(client, bearer(other))).items():
        assert response.status_code == 200, (path, response.text)


async def test_a_refresh_tokens_reuse_ends_the_access_tokens_too(client: httpx.AsyncClient) -> None:
    session = await sign_up(client)
    rotated = (await client.post("/v1/auth:refresh", json={"refreshToken": session["refreshToken"]})).json()
    reused = await client.post("/v1/auth:refresh", json={"refreshToken": session["refreshToken"]})
    assert_problem(reused, 401, "REFRESH_TOKEN_REUSED")
    assert_problem(await client.get("/v1/me", headers=bearer(rotated)), 401, "SESSION_ENDED")


# --- finding 9: tokens of accounts that do not exist -------------------------------------------------


async def test_a_token_for_an_account_that_does_not_exist_is_refused_everywhere(
    client: httpx.AsyncClient, jwt_private_key_file: Path
) -> None:
    someone = await sign_up(client)
    ghost = {"Authorization": f"Bearer {mint(jwt_private_key_file, sid=str(uuid.uuid4()))}"}
    for response in (await statuses(client, ghost)).values():
        assert_problem(response, 401, "TOKEN_INVALID")
    created = await client.post("/v1/recipients", json={"name": "Nobody's aunt"}, headers=ghost)
    assert_problem(created, 401, "TOKEN_INVALID")
    asked = await client.post("/v1/connection-requests", json={"toUserId": someone["user"]["id"]}, headers=ghost)
    assert_problem(asked, 401, "TOKEN_INVALID")
    incoming = await client.get("/v1/connection-requests", params={"direction": "incoming"}, headers=bearer(someone))
    assert incoming.status_code == 200 and incoming.json().get("connectionRequests", []) == []


# --- finding 1: log-in failure limits in the auth service ----------------------------------------------


def argon2_runs(stack: Stack) -> float:
    """Argon2 verifications started by the stack's auth instances (their /metrics)."""
    return summed(stack, "auth", r'auth_argon2_runs_total\{op="verify"\} (\S+)')


def retry_after(error: grpc.aio.AioRpcError) -> int:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.seconds
    raise AssertionError("no RetryInfo")


async def test_log_in_guesses_over_grpc_through_envoy_stop_at_the_account_limit_before_argon2(
    stack: Stack, envoy_grpc: str, client: httpx.AsyncClient
) -> None:
    session = await sign_up(client)
    email = session["user"]["email"]
    async with stack.envoy_channel() as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)

        async def log_in(password: str, **who: str) -> grpc.StatusCode:
            try:
                await stub.LogIn(auth_pb2.LogInRequest(password=password, **who), timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert 0 < retry_after(exc) <= 15 * 60
                return exc.code()
            return grpc.StatusCode.OK

        # The account's 10 failures, by email and by username alike: each one an Argon2 run.
        for i in range(10):
            who = {"email": email} if i % 2 else {"username": session["user"]["username"]}
            assert await log_in(f"wrong guess {i}", **who) == grpc.StatusCode.UNAUTHENTICATED
        before = argon2_runs(stack)
        assert before >= 10  # the counter is read (each failure above ran Argon2)
        for i in range(5):
            assert await log_in(f"more guesses {i}", email=email) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Even the right password waits for the window: nothing tells a guesser it was right.
        assert await log_in(PASSWORD, email=email) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert argon2_runs(stack) == before
        # Other accounts are not affected.
        assert await log_in("wrong", email=f"{unique()}@example.com") == grpc.StatusCode.UNAUTHENTICATED

    over_http = await client.post("/v1/auth:login", json={"email": email, "password": PASSWORD})
    assert_problem(over_http, 429, "LOGIN_RATE_LIMITED")
    assert 0 < int(over_http.headers["retry-after"]) <= 15 * 60


async def test_the_per_ip_limit_keys_the_address_the_mesh_forwarded(stack: Stack) -> None:
    """An auth instance of its own (not in Envoy's endpoints) with a per-IP limit of 3, called
    directly from 127.0.0.1 (a trusted hop here) with the client address as the gateway forwards it."""
    auth = stack.instance("auth", 0)
    address = f"127.0.0.1:{free_port()}"
    env = {
        **stack.service_env(auth),
        "GRPC_LISTEN": address,
        "ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
        "SERVICE_INSTANCE": "auth-limits",
        "CONTROL_PLANE_TARGET": "",  # not registered: the rest of the suite never reaches it
        "CACHE_PREFIX": f"{stack.cache_prefix}limits{uuid.uuid4().hex[:8]}:",
        "LOGIN_FAILURES_PER_IP": "3",
    }
    stack.spawn(
        "auth-limits",
        [sys.executable, "-m", "services.auth"],
        env=env,
        ready=stack.health_probe(address, auth.service),
    )
    async with stack.channel_to(address, auth.service.name) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)

        async def log_in(client_ip: str) -> grpc.StatusCode:
            request = auth_pb2.LogInRequest(email=f"{unique()}@example.com", password="wrong password")
            try:
                await stub.LogIn(request, metadata=[("x-forwarded-for", client_ip)], timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        # Three different accounts from one address, then the address is refused, whatever account.
        assert [await log_in("203.0.113.7") for _ in range(4)] == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [
            grpc.StatusCode.RESOURCE_EXHAUSTED
        ]
        assert await log_in("203.0.113.8") == grpc.StatusCode.UNAUTHENTICATED


def test_forwarded_addresses_are_read_only_from_trusted_hops() -> None:
    limits = LoginLimits(
        redis.Redis(),  # never connects: client_ip needs no Redis
        "p:",
        LoginLimitSettings(trusted_proxies=parse_networks("10.0.0.0/8")),
    )
    forwarded = [("x-forwarded-for", "203.0.113.9")]
    assert limits.client_ip(forwarded, "ipv4:10.1.2.3:5000") == "203.0.113.9"
    assert limits.client_ip(forwarded, "ipv4:198.51.100.4:5000") == "198.51.100.4"
    assert limits.client_ip([], "ipv6:[2001:db8::1]:443") == "2001:db8::1"
    assert limits.client_ip([("x-forwarded-for", "not an address")], "ipv4:10.1.2.3:1") == "10.1.2.3"
