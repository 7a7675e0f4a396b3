"""SPEC §10 "Redis down", through a whole mesh of its own pointed at a redis-server of the test's
own: frozen under load (SIGSTOP: it keeps its data and answers nothing, the hard case for caches),
then thawed.

- during the outage: no 5xx; the gateway limits per instance (a fresh local bucket), says so in
  its metrics; a profile write succeeds and reads see it (from Postgres);
- after: global limiting resumes by itself (the Redis bucket as it was before the outage), and the
  profile cached before the outage is never served again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from launcher.infra import Infra
from launcher.keys import KeyPair
from mesh.topology import AUTH
from tests.auth.test_auth_http import bearer, sign_up
from tests.conftest import start_test_stack
from tests.ratelimit.redis_server import RedisServer

pytestmark = pytest.mark.slow(13)


async def wait_for(condition: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + 30.0
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def admitted(client: httpx.AsyncClient, count: int) -> int:
    statuses = [(await client.get(f"/v1/usernames/o{uuid.uuid4().hex[:10]}")).status_code for _ in range(count)]
    assert set(statuses) <= {200, 429}, statuses
    return statuses.count(200)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def test_redis_frozen_under_load(infra: Infra, jwt_keys: KeyPair, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path).start()
    stack = None
    try:
        stack = await asyncio.to_thread(
            start_test_stack,
            infra,
            jwt_keys,
            services=(AUTH,),  # what the test calls: sign-up, /v1/me, usernames
            env={"REDIS_URL": redis.url},
            gateway_env={
                "GATEWAY_RATELIMIT_IP": "20/3600",
                "GATEWAY_RATELIMIT_USER": "100000/60",
                "GATEWAY_RATELIMIT_BACKOFF_SECONDS": "0.3",
            },
        )
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30.0) as client:
            session = await sign_up(client, firstName="Before")  # 1 of the address's 20
            auth = bearer(session)
            for _ in range(4):  # cached in Redis, read through both auth instances
                assert (await client.get("/v1/me", headers=auth)).json()["firstName"] == "Before"
            assert await admitted(client, 9) == 9  # the Redis bucket: 10 spent, 10 left

            statuses: list[int] = []
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    statuses.append((await client.get("/v1/me", headers=auth)).status_code)

            workers = [asyncio.create_task(load()) for _ in range(4)]
            await wait_for(lambda: _true(len(statuses) > 20))

            redis.freeze()

            async def outage_seen() -> bool:
                return metric((await client.get("/metrics")).text, "gateway_ratelimit_redis_up") == 0

            # The load finds the outage (its lease of the user's cells runs out, the renewal times
            # out) before any IP decision could: a call that timed out on the frozen Redis is still
            # run when it thaws, and would spend a cell of the IP bucket counted below.
            await wait_for(outage_seen)
            patched = await client.patch("/v1/me", json={"firstName": "During"}, headers=auth)
            assert patched.status_code == 200, patched.text
            assert (await client.get("/v1/me", headers=auth)).json()["firstName"] == "During"
            # A fresh per-instance bucket: the full 20, not the 10 left in Redis.
            assert await admitted(client, 30) == 20
            metrics = (await client.get("/metrics")).text
            assert metric(metrics, "gateway_ratelimit_redis_up") == 0
            assert metric(metrics, "gateway_ratelimit_fallback_total") >= 30

            redis.thaw()

            async def global_again() -> bool:
                return metric((await client.get("/metrics")).text, "gateway_ratelimit_redis_up") == 1

            await wait_for(global_again)
            fallback = metric((await client.get("/metrics")).text, "gateway_ratelimit_fallback_total")
            assert await admitted(client, 15) == 10  # the Redis bucket again, as the outage left it
            metrics = (await client.get("/metrics")).text
            assert metric(metrics, "gateway_ratelimit_fallback_total") == fallback
            for _ in range(20):  # never the profile cached before the outage, on any instance
                assert (await client.get("/v1/me", headers=auth)).json()["firstName"] == "During"

            stop.set()
            await asyncio.gather(*workers)
            assert statuses and set(statuses) == {200}, sorted(set(statuses))
        log = stack.log_path("gateway").read_text()
        assert log.count("redis unreachable, limiting per instance") == 1
        assert log.count("redis is back, limiting globally again") == 1
    finally:
        redis.thaw()
        if stack is not None:
            await asyncio.to_thread(stack.close)
        redis.kill()


async def _true(value: bool) -> bool:
    return value
