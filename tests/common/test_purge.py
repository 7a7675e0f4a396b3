"""The housekeeping purge of idempotency keys (services/common/purge.py) against a real Postgres:
a scratch database of each service, migrated by its real command. One pass removes exactly the
keys past SPEC §3's 24 hours and counts them; a pass stops at its cap; two passes at once remove
each row once, without error or waiting on each other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.common import idempotency
from services.common.db import Database
from services.common.purge import Purger
from services.common.settings import DatabaseSettings, PurgeSettings
from tests.query_plans import ADMIN_DSN, scratch_database

# `n` keys created `age` ago, named '<label>-<i>'.
SEED = """
    INSERT INTO idempotency_keys (operation, caller, key, request_hash, created_at)
    SELECT 'op', 'caller', $1 || '-' || i, '\\x00', now() - $2::text::interval FROM generate_series(1, $3) AS i
"""


def purged(table: str = "idempotency_keys") -> float:
    return REGISTRY.get_sample_value("purged_rows_total", {"table": table}) or 0.0


@asynccontextmanager
async def database(service: str) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    async with scratch_database(service) as conn:
        name = await conn.fetchval("SELECT current_database()")
        yield conn, ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"


def purger(url: str, *, batch_size: int = 500, max_rows_per_run: int = 50_000) -> Purger:
    db = Database(DatabaseSettings(url, pool_size=2, max_overflow=0))
    return Purger(db, [idempotency.PURGE], PurgeSettings(batch_size=batch_size, max_rows_per_run=max_rows_per_run))


async def keys(conn: asyncpg.Connection, label: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key LIKE $1 || '-%'", label))


@pytest.mark.parametrize("service", ["auth", "recipients", "capsules"])
async def test_one_pass_removes_exactly_the_expired_keys_and_counts_them(service: str) -> None:
    async with database(service) as (conn, url):
        await conn.execute(SEED, "expired", "25 hours", 1_234)
        await conn.execute(SEED, "old", "24 hours 1 second", 5)
        await conn.execute(SEED, "live", "23 hours 59 minutes", 40)
        await conn.execute(SEED, "fresh", "0 seconds", 40)
        job = purger(url)
        before = purged()
        try:
            removed = await job.run_once()
        finally:
            await job.db.close()
        assert removed == {"idempotency_keys": 1_239}
        assert purged() - before == 1_239
        assert (await keys(conn, "expired"), await keys(conn, "old")) == (0, 0)
        assert (await keys(conn, "live"), await keys(conn, "fresh")) == (40, 40)


async def test_a_pass_stops_at_its_cap_and_the_next_one_goes_on() -> None:
    async with database("recipients") as (conn, url):
        await conn.execute(SEED, "expired", "2 days", 1_000)
        await conn.execute(SEED, "live", "1 hour", 10)
        job = purger(url, batch_size=100, max_rows_per_run=250)
        before = purged()
        try:
            assert await job.run_once() == {"idempotency_keys": 250}  # 100 + 100 + 50
            assert await keys(conn, "expired") == 750
            assert await job.run_once() == {"idempotency_keys": 250}
            assert await keys(conn, "expired") == 500
        finally:
            await job.db.close()
        assert purged() - before == 500
        assert await keys(conn, "live") == 10


async def test_two_passes_at_once_remove_each_row_once_without_waiting_on_each_other() -> None:
    async with database("capsules") as (conn, url):
        await conn.execute(SEED, "expired", "3 days", 6_000)
        await conn.execute(SEED, "live", "1 minute", 25)
        jobs = [purger(url, batch_size=200), purger(url, batch_size=200)]
        before = purged()
        # A row one of them holds is skipped by the other (SKIP LOCKED), never waited for: a
        # transaction of the test holding some expired rows must not stall either pass.
        async with conn.transaction():
            held = await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM idempotency_keys WHERE key LIKE 'expired-%'"
                " ORDER BY key LIMIT 10 FOR UPDATE) AS held"
            )
            try:
                first, second = await asyncio.wait_for(asyncio.gather(*(j.run_once() for j in jobs)), timeout=60)
            finally:
                await asyncio.gather(*(j.db.close() for j in jobs))
        total = first["idempotency_keys"] + second["idempotency_keys"]
        assert held == 10
        assert total == 6_000 - 10, (first, second)
        assert purged() - before == total
        assert await keys(conn, "expired") == 10  # the held ones, left for the next pass
        assert await keys(conn, "live") == 25
