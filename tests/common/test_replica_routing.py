"""The routing of services/common/replicas.py and Database's reads that may lag, against the real
Postgres, its shared standby (read only here: nothing pauses or stops it) and Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from launcher.infra import Infra
from launcher.stack import Stack
from services.common.db import Database
from services.common.replicas import (
    REPLICA_FALLBACKS,
    Replica,
    ReplicaRouter,
    Watermarks,
    WatermarksUnknown,
    parse_lsn,
)
from services.common.settings import DatabaseSettings
from tests.capsules.helpers import bearer, eventually, pair, send
from tests.metrics import sample
from tests.query_plans import scratch_database
from tests.replica import replayed


def test_lsn_text_parses_to_its_64_bit_position() -> None:
    assert parse_lsn("0/0") == 0
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert parse_lsn("0/10") < parse_lsn("0/100") < parse_lsn("1/0")


@pytest.fixture
async def watermarks(infra: Infra) -> AsyncIterator[Watermarks]:
    client = redis.from_url(infra.redis_url)
    marks = Watermarks(client, f"test:{uuid.uuid4().hex[:10]}:", keep_seconds=5)
    yield marks
    left = [k async for k in client.scan_iter(f"{marks.prefix}*")]
    if left:
        await client.delete(*left)
    await client.aclose()


async def test_watermarks_keep_the_highest_position_per_user_for_a_while(watermarks: Watermarks) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert await watermarks.needed([a, b]) == 0
    assert await watermarks.needed([]) == 0
    await watermarks.record(0x2_0000_0100, [a, b])
    # A slower writer's older position does not lower it (string order of 16 hex digits).
    await watermarks.record(0x2_0000_00FF, [a])
    await watermarks.record(0x1_FFFF_FFFF, [c])
    assert await watermarks.needed([a]) == 0x2_0000_0100
    assert await watermarks.needed([c]) == 0x1_FFFF_FFFF
    assert await watermarks.needed([c, b]) == 0x2_0000_0100
    assert 0 < await watermarks.client.ttl(watermarks.key(a)) <= 5


async def test_an_instance_that_failed_to_record_vouches_for_no_replica_read(infra: Infra) -> None:
    unreachable = redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    marks = Watermarks(unreachable, "test:", keep_seconds=5)
    with pytest.raises(WatermarksUnknown):
        await marks.needed([uuid.uuid4()])
    await marks.record(1, [uuid.uuid4()])  # logged and counted, never raised: the write committed
    # Even once Redis answers, this instance cannot know which positions it failed to record.
    marks.client = redis.from_url(infra.redis_url)
    with pytest.raises(WatermarksUnknown):
        await marks.needed([])
    await marks.client.aclose()
    await unreachable.aclose()


def router_with(replicas: list[Replica], watermarks: Watermarks, max_lag: float = 2.0) -> ReplicaRouter:
    primary = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:9/none")
    return ReplicaRouter(replicas, primary, watermarks, max_lag_seconds=max_lag, probe_interval_seconds=0.5)


def replica(name: str, replayed: int, lag: float = 0.0, probed_ago: float = 0.0) -> Replica:
    engine = create_async_engine(f"postgresql+asyncpg://nobody@127.0.0.1:9/{name}")
    probed_at = time.monotonic() - probed_ago
    return Replica(name, engine, engine, replayed=replayed, lag_seconds=lag, probed_at=probed_at, in_recovery=True)


async def test_a_read_goes_to_a_replica_that_replayed_its_users_writes(watermarks: Watermarks) -> None:
    behind, ahead = replica("behind", 100), replica("ahead", 300)
    router = router_with([behind, ahead], watermarks)
    writer, stranger = uuid.uuid4(), uuid.uuid4()
    await watermarks.record(200, [writer])
    assert {(await router.choose([writer])).name for _ in range(4)} == {"ahead"}  # type: ignore[union-attr]
    assert {(await router.choose([stranger])).name for _ in range(4)} == {"behind", "ahead"}  # type: ignore[union-attr]
    await watermarks.record(400, [writer])
    held = sample(REPLICA_FALLBACKS, reason="not_replayed")
    assert await router.choose([writer]) is None
    assert sample(REPLICA_FALLBACKS, reason="not_replayed") == held + 1


async def test_replicas_down_lagging_promoted_or_unprobed_take_no_reads(watermarks: Watermarks) -> None:
    lagging = replica("lagging", 10**9, lag=2.5)
    silent = replica("silent", 10**9, probed_ago=60)
    promoted = replica("promoted", 10**9)
    promoted.in_recovery = False
    never = replica("never", 10**9)
    never.probed_at = 0.0
    router = router_with([lagging, silent, promoted, never], watermarks)
    unhealthy = sample(REPLICA_FALLBACKS, reason="unhealthy")
    assert await router.choose([]) is None
    assert sample(REPLICA_FALLBACKS, reason="unhealthy") == unhealthy + 1
    lagging.lag_seconds = 1.5
    assert await router.choose([]) is lagging
    router.read_failed(lagging, OSError("gone"))
    assert await router.choose([]) is None  # until a probe after the failure succeeds


def test_lag_is_the_age_of_the_oldest_primary_position_not_replayed(watermarks: Watermarks) -> None:
    router = router_with([], watermarks)
    now = time.monotonic()
    router._samples.extend([(now - 3.0, 100), (now - 2.0, 200), (now - 1.0, 300), (now, 400)])
    assert router._lag(400, now) == 0.0  # caught up
    assert router._lag(500, now) == 0.0
    assert router._lag(250, now) == pytest.approx(1.0)  # lacks what the primary had 1 s ago
    assert router._lag(150, now) == pytest.approx(2.0)
    # Behind even the oldest sample: how far is unknown, so it is out whatever the bound.
    assert router._lag(50, now) == float("inf")


async def probed_usable(router: ReplicaRouter) -> None:
    """Probe until the replica qualifies (the suite's other tests keep the primary writing, so the
    standby may be a moment behind the first samples)."""

    async def usable() -> bool | None:
        await router.probe_once()
        return True if await router.choose([]) is not None else None

    await eventually(usable, within=30, every=0.1)


async def test_the_monitor_sees_the_shared_standby_up_and_caught_up(infra: Infra, watermarks: Watermarks) -> None:
    if infra.replica is None:
        pytest.skip("no standby (POSTGRES_REPLICA=0)")
    settings = DatabaseSettings(url=infra.postgres.url("postgres"), replica_urls=(infra.replica.url("postgres"),))
    db = Database(settings, watermarks)
    try:
        assert db.router is not None
        (standby,) = db.router.replicas
        assert standby.name == f"127.0.0.1:{infra.replica.port}/postgres"
        await replayed(infra)
        await probed_usable(db.router)
        assert standby.in_recovery and standby.replayed > 0
        assert standby.lag_seconds < 2.0
        assert await db.router.choose([]) is standby
    finally:
        await db.close()


async def test_a_read_the_replica_fails_is_run_again_on_the_primary(infra: Infra, watermarks: Watermarks) -> None:
    """A hot standby refuses writes: a statement that fails there (as a conflict with recovery or a
    lost connection would) is answered by the primary, and the replica sits out."""
    if infra.replica is None:
        pytest.skip("no standby (POSTGRES_REPLICA=0)")
    async with scratch_database("capsules") as scratch:
        name = await scratch.fetchval("SELECT current_database()")
        await replayed(infra)
        settings = DatabaseSettings(url=infra.postgres.url(name), replica_urls=(infra.replica.url(name),))
        db = Database(settings, watermarks)
        try:
            assert db.router is not None
            await probed_usable(db.router)

            async def where(conn: object) -> bool:
                return bool(await conn.scalar(text("SELECT pg_is_in_recovery()")))  # type: ignore[attr-defined]

            assert await db.read_may_lag(where) is True  # the standby answers

            async def needs_the_primary(conn: object) -> int:
                await conn.execute(text("CREATE TEMP TABLE t (v int)"))  # type: ignore[attr-defined]
                return 1

            errors = sample(REPLICA_FALLBACKS, reason="error")
            assert await db.read_may_lag(needs_the_primary) == 1
            assert sample(REPLICA_FALLBACKS, reason="error") == errors + 1
            assert await db.read_may_lag(where) is False  # sits out until the next good probe
            await probed_usable(db.router)
            assert await db.read_may_lag(where) is True
        finally:
            await db.close()


async def test_inbox_pages_through_the_gateway_are_index_scans_on_the_standby(
    stack: Stack, client: httpx.AsyncClient, infra: Infra
) -> None:
    """What README's walk through `make up` shows, on the test stack: a filtered inbox page (it
    reaches Postgres on every call) is an index scan of `capsules` on the standby."""
    if infra.replica is None:
        pytest.skip("no standby (POSTGRES_REPLICA=0)")
    a, b, to_b = await pair(client)
    assert (await send(client, a, to_b)).status_code == 200
    database = stack.database_name("capsules")
    scans = "SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_tables WHERE relname = 'capsules'"
    standby = await asyncpg.connect(infra.replica.dsn(database))
    try:
        before = await standby.fetchval(scans)

        async def scanned_on_the_standby() -> bool | None:
            page = await client.get("/v1/capsules?box=inbox&status=sealed", headers=bearer(b))
            assert page.status_code == 200 and len(page.json()["capsules"]) == 1, page.text
            # Statistics are published within a second of the statement.
            return True if await standby.fetchval(scans) > before else None

        await eventually(scanned_on_the_standby, within=20, every=0.25)
    finally:
        await standby.close()
