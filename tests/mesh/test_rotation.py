"""Certificate rotation under load on the running mesh (SPEC §12: certificates rotate without a
restart), with zero failed calls.

While clients call through the gateway (gateway → auth, proxyless, mutual TLS), through Envoy as the
operator (a public method) and through Envoy as the capsules workload (an internal one, Envoy → auth
with the caller in XFCC), every workload's certificate is issued anew and the control plane is told
to give Envoy a new one (`Stack.rotate_certificates`). Then: Envoy presents only new certificates
(its listener's and clusters' over SDS, its control-plane connection's from its watched files), an
auth instance hands new handshakes its new certificate, the gateway reopened its channels, no
process restarted, and not one call failed.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc

from launcher.stack import Stack
from mesh.pki import IDENTITY_NAME
from mesh.topology import AUTH
from tests.auth.test_auth_http import bearer, sign_up
from tests.mesh.test_credentials import served_serial
from tests.mesh.test_envoy_tls import envoy_serials
from tests.mesh.test_faults import eventually


def serials_of_envoy(stack: Stack) -> set[int]:
    with urllib.request.urlopen(f"{stack.envoy_admin_url}/certs", timeout=5) as response:
        return envoy_serials(json.load(response))


def served_to_the_operator(address: str, stack: Stack) -> int:
    tls = stack.identity("operator")
    assert tls is not None
    return served_serial(address, tls.directory / IDENTITY_NAME)


def log_mentions(stack: Stack, name: str, text: str) -> int:
    return stack.log_path(name).read_text(errors="replace").count(text)


async def test_every_certificate_rotates_under_load_without_a_failed_call(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    session = await sign_up(client)
    token = session["accessToken"]
    metadata = (("authorization", f"Bearer {token}"),)
    auth_address = stack.instances[AUTH.name][0].grpc_address
    processes = {p.name: p.pid for p in (stack.envoy, stack.control_plane, stack.gateway) if p is not None}
    before_envoy = await asyncio.to_thread(serials_of_envoy, stack)
    before_auth = await asyncio.to_thread(served_to_the_operator, auth_address, stack)
    reloads_before = log_mentions(stack, "gateway", "mesh certificate reloaded")

    failures: list[str] = []
    calls: dict[str, int] = {"http": 0, "operator": 0, "capsules": 0}
    stop = asyncio.Event()

    async def loop(kind: str, call: Callable[[], Awaitable[Any]]) -> None:
        while not stop.is_set():
            try:
                await call()
                calls[kind] += 1
            except (grpc.aio.AioRpcError, httpx.HTTPError, AssertionError) as exc:
                failures.append(f"{kind}: {exc!r}"[:300])

    async def http_me() -> None:
        answer = await client.get("/v1/me", headers=bearer(session))
        assert answer.status_code == 200, answer.text

    operator, capsules = stack.envoy_channel("operator"), stack.envoy_channel("capsules")

    async def as_operator() -> None:
        await auth_pb2_grpc.AuthServiceStub(operator).GetMe(auth_pb2.GetMeRequest(), metadata=metadata, timeout=10)

    async def as_capsules() -> None:
        ids = [session["user"]["id"]]
        found = await auth_pb2_grpc.AuthServiceStub(capsules).GetUsers(
            auth_pb2.GetUsersRequest(ids=ids), metadata=metadata, timeout=10
        )
        assert [u.id for u in found.users] == ids

    workers = [
        *(asyncio.create_task(loop("http", http_me)) for _ in range(3)),
        asyncio.create_task(loop("operator", as_operator)),
        asyncio.create_task(loop("capsules", as_capsules)),
    ]
    try:
        await eventually("load running", lambda: _true(min(calls.values()) >= 20), 15.0)
        await asyncio.to_thread(stack.rotate_certificates)

        async def envoy_rotated() -> bool:
            return not (await asyncio.to_thread(serials_of_envoy, stack)) & before_envoy

        async def auth_rotated() -> bool:
            return await asyncio.to_thread(served_to_the_operator, auth_address, stack) != before_auth

        async def gateway_reloaded() -> bool:
            return log_mentions(stack, "gateway", "mesh certificate reloaded") > reloads_before

        await eventually("Envoy presents only new certificates", envoy_rotated, 15.0)
        await eventually("an auth instance serves its new certificate", auth_rotated, 15.0)
        await eventually("the gateway reloaded its certificate", gateway_reloaded, 15.0)
        counted = dict(calls)
        await eventually(
            "load after the rotation", lambda: _true(all(calls[k] >= counted[k] + 20 for k in calls)), 15.0
        )
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await operator.close()
        await capsules.close()
    assert failures == [], failures[:5]
    assert processes == {p.name: p.pid for p in (stack.envoy, stack.control_plane, stack.gateway) if p is not None}


async def _true(value: bool) -> bool:
    return value
