"""The steps of the crash tests (a process killed at a failpoint, then restarted): a stack with one
instance of each service, so the one that dies is the one doing the work, and the restarts.
services/common/failpoints.py: FAILPOINTS=name makes a process exit on the spot (code 70) there;
the environment is read at start, so only the instance started with it armed dies."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import asyncpg
import httpx

from launcher import infra as infra_mod
from launcher.keys import KeyPair
from launcher.stack import Stack
from services.common.failpoints import EXIT_CODE
from tests.capsules.helpers import bearer, eventually
from tests.conftest import start_test_stack

# A route of each service that a signed-up user may read: "the gateway reaches it".
SERVED_BY = {
    "auth": "/v1/me",
    "capsules": "/v1/capsules",
    "recipients": "/v1/connections",
    "notifications": "/v1/notifications:unreadCount",
}


def start_crash_stack(infra: infra_mod.Infra, keys: KeyPair, service_env: dict[str, str]) -> Stack:
    """One instance of each service, no gateway rate limits, nothing armed (FAILPOINTS empty)."""
    return start_test_stack(
        infra,
        keys,
        instances=dict.fromkeys(SERVED_BY, 1),
        gateway_env={"GATEWAY_RATELIMIT_ENABLED": "0"},
        service_env={"FAILPOINTS": "", **service_env},
    )


async def connect_db(stack: Stack, service: str) -> asyncpg.Connection:
    return await asyncpg.connect(stack.database_urls[service].replace("postgresql+asyncpg://", "postgresql://"))


def arm(stack: Stack, failpoints: str) -> None:
    """FAILPOINTS for the instances started from now on."""
    stack.settings = replace(stack.settings, service_env={**stack.settings.service_env, "FAILPOINTS": failpoints})


async def restart(stack: Stack, api: httpx.AsyncClient, service: str, probe: dict[str, Any], failpoints: str) -> None:
    """The service's one instance (dead at a failpoint, or stopped here) started again with
    FAILPOINTS=`failpoints`; returns once the gateway reaches it (a read of `probe`'s)."""
    instance = stack.instance(service, 0)
    if instance.running:
        await stack.astop_instance(instance)
    arm(stack, failpoints)
    await stack.astart_instance(service, 0)

    async def served() -> bool | None:
        return True if (await api.get(SERVED_BY[service], headers=bearer(probe))).status_code == 200 else None

    await eventually(served, within=30.0)
    await routable_through_envoy(stack, service)


async def routable_through_envoy(stack: Stack, service: str) -> None:
    """The other services reach this one through Envoy, which ejected the dead instance: wait until
    Envoy routes to it again (a capsule sent right after a recipients restart was 503 before)."""
    await stack.await_envoy_health(service, healthy=[stack.instance(service, 0).grpc_address], timeout=30.0)


async def start_the_dead(stack: Stack) -> None:
    """Every instance a failed case left dead, started again unarmed."""
    arm(stack, "")
    for service in SERVED_BY:
        if not stack.instance(service, 0).running:
            await stack.astart_instance(service, 0)
            await routable_through_envoy(stack, service)


async def died_at_the_failpoint(stack: Stack, service: str) -> None:
    code = await asyncio.to_thread(stack.instance(service, 0).process.wait, 30)
    assert code == EXIT_CODE, f"{service} exited with {code}, not at its failpoint"
