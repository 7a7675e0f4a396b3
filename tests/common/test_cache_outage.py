"""services.common.cache through Redis outages, against a real redis-server of the test's own.

Two Cache objects stand for two instances of a service sharing Redis; a dict stands for Postgres.
The property: once a write has committed, no instance serves the value from before it, even when
the write's invalidation could not reach Redis and Redis comes back with its data (frozen with
SIGSTOP, then thawed), and reads and writes never fail while Redis is away.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from services.common.cache import Cache
from tests.ratelimit.redis_server import RedisServer

TTL = 300


class Database:
    def __init__(self) -> None:
        self.rows: dict[str, bytes] = {}
        self.loads = 0

    def loader(self, key: str):  # type: ignore[no-untyped-def]
        async def load() -> bytes | None:
            self.loads += 1
            return self.rows.get(key)

        return load


def caches(url: str) -> tuple[Cache, Cache]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    return (
        Cache(url, prefix, timeout_seconds=0.1, backoff_seconds=0.2),
        Cache(url, prefix, timeout_seconds=0.1, backoff_seconds=0.2),
    )


async def wait_for(condition) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10.0
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def read_until_cached(cache: Cache, db: Database, key: str, expected: bytes) -> None:
    """Read until the value comes from Redis again (a hit), asserting every read is `expected`."""

    async def hit() -> bool:
        before = db.loads
        assert await cache.get_or_load("t", key, TTL, db.loader(key)) == expected
        return db.loads == before

    await wait_for(hit)


@pytest.mark.parametrize("invalidation", ["put", "delete"])
async def test_a_write_during_a_freeze_is_never_undone_by_a_pre_outage_entry(
    redis_server: RedisServer, invalidation: str
) -> None:
    a, b = caches(redis_server.url)
    db = Database()
    key = a.key("user", "1")
    db.rows[key] = b"v1"
    try:
        assert await a.get_or_load("t", key, TTL, db.loader(key)) == b"v1"
        await read_until_cached(b, db, key, b"v1")  # both instances serve v1 from Redis

        redis_server.freeze()  # Redis keeps v1 but answers nothing
        # Reads during the outage go to the database (after one timeout each, then a back-off).
        assert await a.get_or_load("t", key, TTL, db.loader(key)) == b"v1"
        assert await b.get_or_load("t", key, TTL, db.loader(key)) == b"v1"
        db.rows[key] = b"v2"  # a write commits; its invalidation is lost, without an error
        started = time.monotonic()
        if invalidation == "put":
            await a.put(key, b"v2", TTL)
        else:
            await a.delete(key)
        assert time.monotonic() - started < 1.0
        assert await a.get_or_load("t", key, TTL, db.loader(key)) == b"v2"
        assert await b.get_or_load("t", key, TTL, db.loader(key)) == b"v2"

        redis_server.thaw()  # v1 is still in Redis under the old generation
        await read_until_cached(b, db, key, b"v2")
        await read_until_cached(a, db, key, b"v2")
    finally:
        redis_server.thaw()
        await a.close()
        await b.close()


async def test_an_idle_instance_sees_the_write_once_the_writer_has_bumped(redis_server: RedisServer) -> None:
    """The writer repairs by itself (background task), without further traffic; an instance that
    saw no failure then misses the pre-outage entry too."""
    a, b = caches(redis_server.url)
    db = Database()
    key = a.key("user", "2")
    db.rows[key] = b"v1"
    try:
        await a.get_or_load("t", key, TTL, db.loader(key))
        await read_until_cached(b, db, key, b"v1")
        redis_server.freeze()
        assert await a.get(key) is None  # times out: A is in back-off and drops...
        db.rows[key] = b"v2"
        await a.delete(key)  # ...this invalidation without sending it
        redis_server.thaw()

        async def bumped() -> bool:
            return await b.client.get(a.generation_key) is not None

        await wait_for(bumped)
        await read_until_cached(b, db, key, b"v2")
    finally:
        redis_server.thaw()
        await a.close()
        await b.close()


async def test_redis_restarting_empty_and_writes_while_it_is_gone(redis_server: RedisServer) -> None:
    a, b = caches(redis_server.url)
    db = Database()
    key = a.key("user", "3")
    db.rows[key] = b"v1"
    try:
        await a.get_or_load("t", key, TTL, db.loader(key))
        redis_server.kill()  # connection refused: fast failures
        db.rows[key] = b"v2"
        await a.put(key, b"v2", TTL)
        await a.delete(key)
        assert await b.get_or_load("t", key, TTL, db.loader(key)) == b"v2"
        assert await b.get_many([key]) == [None]
        redis_server.start()  # empty
        await read_until_cached(a, db, key, b"v2")
        await read_until_cached(b, db, key, b"v2")
    finally:
        await a.close()
        await b.close()


async def test_values_are_cached_and_shared_normally(redis_server: RedisServer) -> None:
    a, b = caches(redis_server.url)
    db = Database()
    key = a.key("user", "4")
    db.rows[key] = b"v1"
    try:
        assert await a.get_or_load("t", key, TTL, db.loader(key)) == b"v1"
        assert await b.get_or_load("t", key, TTL, db.loader(key)) == b"v1"
        assert db.loads == 1
        db.rows[key] = b"v2"
        await a.put(key, b"v2", TTL)
        assert await b.get(key) == b"v2"
        await b.delete(key)
        assert await a.get(key) is None
        await a.put_many_if_absent({key: b"v3"}, TTL)
        assert await b.get_many([key, a.key("other")]) == [b"v3", None]
        assert db.loads == 1
    finally:
        await a.close()
        await b.close()


async def test_a_write_whose_invalidation_timed_out_answers_only_once_no_instance_can_read_the_old_value(
    redis_server: RedisServer,
) -> None:
    """A put that times out on a busy Redis (frozen here for a moment) does not return while the
    other instance, which saw no failure, can still read the value from before the write: the
    writer bumps the generation as soon as Redis answers (within one back-off) before returning."""
    writer, other = caches(redis_server.url)
    db = Database()
    key = writer.key("rel", "a", "b")
    db.rows[key] = b"connected"
    await other.put(key, b"connected", TTL)
    await read_until_cached(other, db, key, b"connected")

    db.rows[key] = b"blocked"  # the write committed
    redis_server.freeze()

    async def thaw_once_the_put_failed() -> None:
        await wait_for(lambda: _true(writer._must_bump))
        redis_server.thaw()

    thawing = asyncio.create_task(thaw_once_the_put_failed())
    try:
        await writer.put(key, b"blocked", TTL)  # its script timed out; Redis back within the back-off
    finally:
        redis_server.thaw()
        await thawing
    # The other instance saw no failure, yet it does not serve the value from before the write.
    assert await other.get_or_load("t", key, TTL, db.loader(key)) == b"blocked"
    await writer.close()
    await other.close()


async def _true(value: bool) -> bool:
    return value
