"""services.common.cache: concurrent misses of one key share one load, and a caller that is
cancelled while it waits (its client went away) neither fails the others nor stops the load.
Against a real redis-server of the test's own."""

from __future__ import annotations

import asyncio
import uuid

from prometheus_client import REGISTRY

from services.common.cache import Cache
from tests.ratelimit.redis_server import RedisServer


def misses() -> float:
    return REGISTRY.get_sample_value("cache_requests_total", {"cache": "t", "result": "miss"}) or 0.0


async def until(condition: object, tries: int = 5_000) -> None:
    """Wait (polling the state, 1 ms apart) until `condition()` holds."""
    for _ in range(tries):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not met in time")


async def test_a_cancelled_first_caller_does_not_fail_fifty_waiters(redis_server: RedisServer) -> None:
    # A generous Redis timeout: on a loaded machine the default 0.25 s may expire, and a store that
    # timed out is skipped by design (what is measured here is the sharing, not the outage path).
    cache = Cache(redis_server.url, f"t{uuid.uuid4().hex[:8]}:", timeout_seconds=5.0)
    key = cache.key("user", "1")
    started, release = asyncio.Event(), asyncio.Event()
    loads = 0

    async def slow_load() -> bytes:
        nonlocal loads
        loads += 1
        started.set()
        await release.wait()  # the database answering late: every caller is waiting on this load
        return b"value"

    try:
        first = asyncio.create_task(cache.get_or_load("t", key, 60, slow_load))
        await started.wait()
        before = misses()
        waiters = [asyncio.create_task(cache.get_or_load("t", key, 60, slow_load)) for _ in range(50)]
        # A caller counts its miss and joins the load in flight in one step (no await between).
        await until(lambda: misses() == before + 50)
        first.cancel()
        release.set()
        assert await asyncio.gather(*waiters) == [b"value"] * 50
        assert first.cancelled()
        assert loads == 1, "one load for all of them"
        assert await cache.get(key) == b"value", "the shared load stored its value although its starter left"
    finally:
        await cache.close()
