"""Every list and lookup of the recipients service is served by an index (SPEC §9), shown with
EXPLAIN on seeded data: a fresh database migrated by the real command, seeded with generate_series
(200,000 recipients, 100,000 requests, 50,000 connections, 20,000 blocks), analysed; each
statement exactly as the service sends it must use its index and never scan its table."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.common import idempotency
from services.recipients import storage
from tests.query_plans import IDEMPOTENCY_SEED, no_scan, plan, purge_plans, seeded_database


def user(i: int) -> uuid.UUID:
    return uuid.UUID(int=i + 1)


# Users are the UUIDs 1..10,000 (lpad'ed hex), so tests can name them.
UID = "lpad(to_hex({}), 32, '0')::uuid"
SEED = f"""
    INSERT INTO recipients (id, owner, name, email)
    SELECT gen_random_uuid(), {UID.format("1 + i % 10000")}, 'person ' || i, 'p' || i || '@example.com'
      FROM generate_series(1, 200000) AS i;
    INSERT INTO connection_requests (id, from_user, to_user, status, created_at, responded_at)
    SELECT gen_random_uuid(), {UID.format("1 + i % 10000")}, {UID.format("1 + (i * 7 + 1) % 10000")},
           (ARRAY['pending','accepted','declined','cancelled'])[1 + i % 4],
           now() - (i % 1000) * interval '1 hour', now() - (i % 900) * interval '1 hour'
      FROM generate_series(1, 100000) AS i ON CONFLICT DO NOTHING;
    INSERT INTO connections (id, user_low, user_high)
    SELECT gen_random_uuid(), least(a, b), greatest(a, b) FROM (
        SELECT {UID.format("1 + i % 10000")} AS a, {UID.format("1 + (i * 13 + 5) % 10000")} AS b
          FROM generate_series(1, 50000) AS i) AS pairs
     WHERE a <> b ON CONFLICT DO NOTHING;
    INSERT INTO blocks (id, blocker, blocked)
    SELECT gen_random_uuid(), {UID.format("1 + i % 10000")}, {UID.format("1 + (i * 31 + 3) % 10000")}
      FROM generate_series(1, 20000) AS i ON CONFLICT DO NOTHING;
    {IDEMPOTENCY_SEED};
    ANALYZE;
"""


@pytest.fixture(scope="module")
async def seeded() -> AsyncIterator[asyncpg.Connection]:
    async with seeded_database("recipients", SEED) as conn:
        yield conn


async def test_recipient_list_and_prefix_use_the_name_index(seeded: asyncpg.Connection) -> None:
    for prefix, after in (("%", ("", uuid.UUID(int=0))), ("person 1%", ("person 12", uuid.UUID(int=0)))):
        text = await plan(
            seeded,
            storage.RECIPIENTS,
            o=user(7),
            prefix=prefix,
            after_name=after[0],
            after_id=after[1],
            limit=101,
        )
        no_scan(text, "recipients_owner_name_idx")


async def test_request_lists_and_rule_lookups_use_indexes(seeded: asyncpg.Connection) -> None:
    after = {"after": storage.MAX_UUID, "limit": 21}
    no_scan(await plan(seeded, storage.INCOMING, u=user(5), **after), "connection_requests_incoming_idx")
    no_scan(await plan(seeded, storage.OUTGOING, u=user(5), **after), "connection_requests_outgoing_idx")
    no_scan(await plan(seeded, storage.SENT_SINCE, f=user(5), h=24), "connection_requests_sender_time_idx")
    no_scan(await plan(seeded, storage.DECLINED_SINCE, f=user(5), t=user(6), d=7), "connection_requests_declined_idx")
    low, high = storage.ordered(user(5), user(6))
    no_scan(
        await plan(seeded, storage.PENDING_ONE_WAY, low=low, high=high, f=user(5)),
        "connection_requests_pending_pair_key",
    )


async def test_connection_list_uses_both_end_indexes(seeded: asyncpg.Connection) -> None:
    text = await plan(seeded, storage.CONNECTIONS, user(9), storage.MAX_UUID, 21)
    no_scan(text, "connections_low_list_idx", "connections_high_list_idx")


async def test_block_lookups_use_indexes(seeded: asyncpg.Connection) -> None:
    either = await plan(seeded, storage.BLOCKED_EITHER_WAY, a=user(3), b=user(4))
    no_scan(either, "Index")
    assert "blocks_pkey" in either or "blocks_list_idx" in either, either
    no_scan(await plan(seeded, storage.BLOCK_RELATIONS, u=user(3)), "blocks_blocked_idx")
    no_scan(await plan(seeded, storage.LIST_BLOCKS, u=user(3), after=storage.MAX_UUID, limit=21), "blocks_list_idx")


async def test_idempotency_key_purge_uses_the_created_index(seeded: asyncpg.Connection) -> None:
    (text,) = await purge_plans(seeded, idempotency.PURGE)
    no_scan(text, "idempotency_keys_created_idx", "LockRows", "Tid Scan")
