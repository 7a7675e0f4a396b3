"""The outbox relay (services/common/outbox.py) against a real Postgres (a scratch database of each
producing service, migrated by its real command) and a redis-server of the test's own: an event
commits with its write or not at all; a fresh relay republishes nothing already published and
publishes what was left; two relays at once publish each row once (SKIP LOCKED); with Redis away
the relay backs off, never dies, and publishes once Redis is back; published rows past the
retention are purged."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from services.common import events, outbox
from services.common.db import Database
from services.common.events import Event
from services.common.purge import Purger
from services.common.settings import DatabaseSettings, OutboxSettings, PurgeSettings
from tests.query_plans import ADMIN_DSN, scratch_database
from tests.ratelimit.redis_server import RedisServer

STREAM = "t:outbox-test:events"


@asynccontextmanager
async def service_database(service: str) -> AsyncIterator[tuple[asyncpg.Connection, Database]]:
    async with scratch_database(service) as conn:
        name = await conn.fetchval("SELECT current_database()")
        url = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
        db = Database(DatabaseSettings(url, pool_size=4, max_overflow=0))
        try:
            yield conn, db
        finally:
            await db.close()


def relay(db: Database, client: redis.Redis, **options: float) -> outbox.Relay:
    settings: dict[str, float] = {"batch_size": 50, "interval_seconds": 0.05, "max_backoff_seconds": 0.4}
    settings.update(options)
    return outbox.Relay(
        db,
        client,
        service="test",
        stream=STREAM,
        batch_size=int(settings["batch_size"]),
        interval_seconds=settings["interval_seconds"],
        max_backoff_seconds=settings["max_backoff_seconds"],
        publish_timeout_seconds=0.5,
    )


def thought(i: int = 0) -> Event:
    data = {"thought_id": str(uuid.uuid4()), "sender": str(uuid.UUID(int=i + 1)), "receiver": str(uuid.UUID(int=0))}
    return outbox.event(events.THOUGHT_RECEIVED, data)


async def add_all(db: Database, batch: list[Event]) -> None:
    async with db.write() as conn:
        for event in batch:
            assert await outbox.add(conn, event)


async def entries(client: redis.Redis) -> list[Event]:
    """The events on the test's stream, in stream order."""
    found: list[tuple[bytes, dict[bytes | str, bytes | str]]] = await client.xrange(STREAM)  # type: ignore[assignment]
    return [Event.from_fields(fields) for _, fields in found]


async def published_ids(client: redis.Redis) -> list[str]:
    return [event.id.hex for event in await entries(client)]


async def unpublished(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": "test"}) or 0.0


async def wait_for(condition, within: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("service", ["recipients", "capsules"])
async def test_an_event_commits_with_its_write_and_is_published_with_its_envelope(
    service: str, redis_server: RedisServer
) -> None:
    client = redis.from_url(redis_server.url)
    async with service_database(service) as (conn, db):
        kept, dropped = thought(1), thought(2)
        await add_all(db, [kept])
        with pytest.raises(RuntimeError):
            async with db.write() as tx:  # a write refused after its event was added: rolled back
                await outbox.add(tx, dropped)
                raise RuntimeError("refused")
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 1

        before = metric("outbox_published_events_total")
        assert await relay(db, client).run_once() == 1
        assert metric("outbox_published_events_total") - before == 1
        assert await entries(client) == [kept]  # id, type, occurred_at, data as committed
        assert await unpublished(conn) == 0
        assert await relay(db, client).run_once() == 0
        assert len(await entries(client)) == 1
    await client.aclose()


async def test_a_derived_id_is_written_once() -> None:
    async with service_database("capsules") as (conn, db):
        capsule = uuid.uuid4()
        data = {"capsule_id": str(capsule), "sender": str(uuid.uuid4()), "claimer": str(uuid.uuid4())}
        event_id = outbox.derived_id(events.INVITE_CLAIMED, capsule)
        assert event_id == outbox.derived_id(events.INVITE_CLAIMED, capsule)
        async with db.write() as tx:
            assert await outbox.add(tx, outbox.event(events.INVITE_CLAIMED, data, id=event_id))
        async with db.write() as tx:
            assert not await outbox.add(tx, outbox.event(events.INVITE_CLAIMED, data, id=event_id))
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 1
        with pytest.raises(ValueError):
            outbox.event("no.such.type", {})


async def test_a_fresh_relay_republishes_nothing_published_and_publishes_what_was_left(
    redis_server: RedisServer,
) -> None:
    client = redis.from_url(redis_server.url)
    async with service_database("recipients") as (conn, db):
        done, left = [thought(i) for i in range(30)], [thought(100 + i) for i in range(70)]
        await add_all(db, done + left)
        # What a relay that stopped had done: the first 30 published (and marked so).
        await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::uuid[])", [e.id for e in done])
        fresh = relay(db, client, batch_size=50)
        assert [await fresh.run_once() for _ in range(3)] == [50, 20, 0]
        assert await published_ids(client) == [e.id.hex for e in left]  # in order, each once
        assert await unpublished(conn) == 0
    await client.aclose()


async def test_a_crash_between_the_publish_and_the_commit_republishes_the_same_events(
    redis_server: RedisServer,
) -> None:
    """At least once: the rows stay unpublished, the next pass sends the same ids again (consumers
    dedupe by id)."""
    client = redis.from_url(redis_server.url)
    async with service_database("recipients") as (conn, db):
        batch = [thought(i) for i in range(5)]
        await add_all(db, batch)
        crashing = relay(db, client)
        original = crashing.redis.pipeline

        def pipeline_then_crash(*args, **kwargs):  # type: ignore[no-untyped-def]
            pipe = original(*args, **kwargs)
            execute = pipe.execute

            async def execute_then_crash() -> object:
                await execute()
                raise ConnectionError("process died before COMMIT")

            pipe.execute = execute_then_crash  # type: ignore[method-assign,assignment]
            return pipe

        crashing.redis.pipeline = pipeline_then_crash  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await crashing.run_once()
        crashing.redis.pipeline = original  # type: ignore[method-assign]
        assert await unpublished(conn) == 5
        assert await relay(db, client).run_once() == 5
        ids = [e.id.hex for e in batch]
        assert await published_ids(client) == ids + ids
        assert await unpublished(conn) == 0
    await client.aclose()


async def test_two_relays_at_once_publish_each_row_once(redis_server: RedisServer) -> None:
    client = redis.from_url(redis_server.url)
    async with service_database("capsules") as (conn, db):
        batch = [thought(i) for i in range(600)]
        for start in range(0, 600, 100):
            await add_all(db, batch[start : start + 100])
        a, b = relay(db, client, batch_size=20), relay(db, client, batch_size=20)

        async def drain(r: outbox.Relay) -> int:
            total = 0
            while taken := await r.run_once():
                total += taken
            return total

        taken = await asyncio.gather(drain(a), drain(b))
        assert sum(taken) == 600
        ids = await published_ids(client)
        assert sorted(ids) == sorted(e.id.hex for e in batch)  # each exactly once
        assert await unpublished(conn) == 0
    await client.aclose()


@pytest.mark.parametrize("outage", ["killed", "frozen"])
async def test_with_redis_away_the_relay_backs_off_and_publishes_once_it_is_back(
    redis_server: RedisServer, outage: str
) -> None:
    client = redis.from_url(redis_server.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    async with service_database("recipients") as (conn, db):
        if outage == "killed":
            redis_server.kill()
        else:
            redis_server.freeze()
        batch = [thought(i) for i in range(10)]
        await add_all(db, batch)
        job = relay(db, client, interval_seconds=0.05, max_backoff_seconds=0.4)
        stop = asyncio.Event()
        errors = metric("outbox_relay_errors_total")
        task = asyncio.create_task(job.run(stop))
        try:

            async def failed_thrice() -> bool:
                return metric("outbox_relay_errors_total") - errors >= 3

            await wait_for(failed_thrice)
            started = time.monotonic()
            seen = metric("outbox_relay_errors_total")
            await asyncio.sleep(1.2)  # measuring the back-off, not synchronising
            # Without a back-off a pass would fail every ~0.05-0.5 s; with it at most one per 0.4 s.
            assert metric("outbox_relay_errors_total") - seen <= (time.monotonic() - started) / 0.4 + 1
            assert not task.done()  # it never dies
            assert await unpublished(conn) == 10  # nothing marked while nothing was published
            assert metric("outbox_backlog_events") == 10

            if outage == "killed":
                redis_server.start()
            else:
                redis_server.thaw()

            async def drained() -> bool:
                return await unpublished(conn) == 0

            await wait_for(drained)
            ids = await published_ids(client)
            # A frozen Redis may have applied XADDs whose answers never came: republished (at
            # least once), never lost; a killed one lost nothing it never got.
            assert set(ids) == {e.id.hex for e in batch}
            if outage == "killed":
                assert ids == [e.id.hex for e in batch]
        finally:
            if outage == "frozen":
                redis_server.thaw()
            stop.set()
            await asyncio.wait_for(task, 5)
    await client.aclose()


async def test_a_commit_wakes_the_relay_and_a_rollback_does_not(redis_server: RedisServer) -> None:
    """The relay polls every 30 s here: an event published within 2 s was published because its
    commit woke the relay (db.after_commit), not by the poll; a rolled-back one never wakes it."""
    client = redis.from_url(redis_server.url)
    async with service_database("recipients") as (conn, db):
        job = relay(db, client, interval_seconds=30.0)
        stop = asyncio.Event()
        task = asyncio.create_task(job.run(stop))
        try:

            async def idle() -> bool:  # its first pass found nothing and it sleeps
                return not outbox.WRITTEN.is_set() and metric("outbox_backlog_events") == 0

            await wait_for(idle)
            with contextlib.suppress(RuntimeError):
                async with db.write() as rolled_back:
                    await outbox.add(rolled_back, thought(1))
                    raise RuntimeError("the write fails: its event goes with it")
            assert not outbox.WRITTEN.is_set()
            event = thought(2)
            started = time.monotonic()
            await add_all(db, [event])

            async def published() -> bool:
                return await published_ids(client) == [event.id.hex]

            await wait_for(published, within=2.0)
            assert time.monotonic() - started < 2.0

            async def marked() -> bool:  # (the XADD is seen before the relay's COMMIT)
                return await unpublished(conn) == 0

            await wait_for(marked, within=2.0)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
    await client.aclose()


async def test_published_rows_past_the_retention_are_purged() -> None:
    async with service_database("capsules") as (conn, db):
        old, recent, waiting = thought(1), thought(2), thought(3)
        await add_all(db, [old, recent, waiting])
        await conn.execute("UPDATE outbox SET published_at = now() - interval '8 days' WHERE id = $1", old.id)
        await conn.execute("UPDATE outbox SET published_at = now() - interval '6 days' WHERE id = $1", recent.id)
        await conn.execute("UPDATE outbox SET occurred_at = now() - interval '30 days' WHERE id = $1", waiting.id)
        purger = Purger(db, [outbox.purge_target(OutboxSettings(retention_days=7))], PurgeSettings())
        assert await purger.run_once() == {"outbox": 1}
        left = {r["id"] for r in await conn.fetch("SELECT id FROM outbox")}
        assert left == {recent.id, waiting.id}  # an unpublished row is never purged, however old
