"""The outbox's statements (services/common/outbox.py) are served by its partial indexes, shown
with EXPLAIN on a seeded outbox (tests/query_plans.py OUTBOX_SEED) in each producing service's
database, each statement exactly as the relay and the purge send it: the relay's batch and the
backlog gauges read only outbox_unpublished_idx, the purge outbox_published_idx."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.common import outbox
from services.common.settings import OutboxSettings
from tests.query_plans import OUTBOX_SEED, no_scan, plan, purge_plans, seeded_database


@pytest.fixture(scope="module", params=["recipients", "capsules"])
async def seeded(request: pytest.FixtureRequest) -> AsyncIterator[asyncpg.Connection]:
    async with seeded_database(request.param, OUTBOX_SEED) as conn:
        yield conn


async def test_the_relay_batch_reads_only_the_unpublished_rows_in_order(seeded: asyncpg.Connection) -> None:
    text = await plan(seeded, outbox.BATCH, limit=100)
    no_scan(text, "outbox_unpublished_idx")
    assert "Sort" not in text, text  # the index gives the order: the batch stops at its limit


async def test_the_backlog_gauges_read_only_the_unpublished_index(seeded: asyncpg.Connection) -> None:
    no_scan(await plan(seeded, outbox.BACKLOG_COUNT, cap=outbox.BACKLOG_COUNT_CAP), "outbox_unpublished_idx")
    no_scan(await plan(seeded, outbox.OLDEST_UNPUBLISHED), "outbox_unpublished_idx")


async def test_the_purge_of_published_rows_uses_its_index(seeded: asyncpg.Connection) -> None:
    for text in await purge_plans(seeded, outbox.purge_target(OutboxSettings())):
        no_scan(text, "outbox_published_idx")


async def test_the_mark_published_update_uses_the_primary_key(seeded: asyncpg.Connection) -> None:
    ids = [r["id"] for r in await seeded.fetch("SELECT id FROM outbox WHERE published_at IS NULL LIMIT 100")]
    no_scan(await plan(seeded, outbox.MARK_PUBLISHED, ids=ids), "outbox_pkey")
