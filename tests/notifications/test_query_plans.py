"""The notifications queries (SPEC §14) are served by their indexes, shown with EXPLAIN on seeded
data: the list (notifications_user_idx), the unread count (notifications_unread_idx)
and markRead upTo (notifications_unread_idx), exactly as services/notifications/storage.py sends them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.notifications import storage
from tests.query_plans import no_scan, plan, seeded_database


def user(i: int) -> uuid.UUID:
    return uuid.UUID(int=i)


UID = "lpad(to_hex({}), 32, '0')::uuid"
# 300,000 notifications among 10,000 users (about 30 each, 9 in 10 read), and ten heavy users
# (UUIDs 1..10) with 20,000 each, one in 20 unread: the case an index must carry.
SEED = f"""
    INSERT INTO notifications (id, event_id, user_id, kind, thought_id, other_user_id, read, created_at)
    SELECT gen_random_uuid(), gen_random_uuid(), {UID.format("11 + i % 10000")}, 'thought_received',
           gen_random_uuid(), {UID.format("11 + (i * 7) % 10000")}, i % 10 <> 0, now() - i * interval '1 minute'
      FROM generate_series(1, 300000) AS i;
    INSERT INTO notifications (id, event_id, user_id, kind, capsule_id, read, created_at)
    SELECT gen_random_uuid(), gen_random_uuid(), {UID.format("1 + i % 10")}, 'capsule_ready',
           gen_random_uuid(), i % 20 <> 0, now() - i * interval '1 second'
      FROM generate_series(1, 200000) AS i;
    ANALYZE notifications;
"""


@pytest.fixture(scope="module")
async def seeded() -> AsyncIterator[asyncpg.Connection]:
    async with seeded_database("notifications", SEED) as conn:
        yield conn


async def test_the_list_uses_its_index(seeded: asyncpg.Connection) -> None:
    for who, after in ((5, storage.MAX_UUID), (6, uuid.UUID(int=1 << 127)), (500, storage.MAX_UUID)):
        no_scan(await plan(seeded, storage.LIST, u=user(who), after=after, limit=21), "notifications_user_idx")


async def test_the_unread_count_reads_only_the_unread(seeded: asyncpg.Connection) -> None:
    # The partial index holds only unread rows. (Index-only once autovacuum has set the visibility
    # map; the seeded template is only ANALYZEd — VACUUM cannot run in the seed's transaction — so
    # the planner may prefer a bitmap scan of the same index here.)
    for who in (5, 500):
        no_scan(await plan(seeded, storage.UNREAD_COUNT, u=user(who)), "notifications_unread_idx")


async def test_mark_read_uses_the_unread_index_and_the_key(seeded: asyncpg.Connection) -> None:
    for who in (5, 500):
        no_scan(
            await plan(seeded, storage.MARK_UP_TO, u=user(who), up_to=uuid.UUID(int=1 << 127)),
            "notifications_unread_idx",
        )
    ids = [uuid.uuid4() for _ in range(100)]
    # By the key or by the unread index (both find each id): never the table.
    by_ids = await plan(seeded, storage.MARK_IDS, u=user(5), ids=ids)
    no_scan(by_ids)
    assert "notifications_pkey" in by_ids or "notifications_unread_idx" in by_ids, by_ids
    owned = await plan(seeded, storage.OWNED, u=user(5), id=ids[0])
    no_scan(owned)
    assert "notifications_pkey" in owned or "notifications_user_idx" in owned, owned
