"""The thoughts queries (SPEC §13) are served by their indexes, shown with EXPLAIN on seeded data:
a database migrated by the real command, seeded (see SEED), analysed; each statement exactly as
the service sends it (services/recipients/storage.py) must use its index and never scan the table:
both lists, and the two look-ups of the daily rules (the pair's thought of the day, the sender's
count of the day)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from services.recipients import storage
from services.recipients.thoughts import utc_day
from tests.query_plans import no_scan, plan, seeded_database


def user(i: int) -> uuid.UUID:
    return uuid.UUID(int=i)


UID = "lpad(to_hex({}), 32, '0')::uuid"
# 300,000 thoughts among 10,000 users over the last year (about 30 each; the few draws where
# sender and receiver would coincide are left out), and ten heavy users
# (UUIDs 1..10) who sent and received 20 a day all year (146,000 rows), the case an index must
# carry. Each row's utc_day comes from its own time (the table's CHECK).
SEED = f"""
    INSERT INTO thoughts (id, sender, receiver, utc_day, created_at)
    SELECT gen_random_uuid(), {UID.format("11 + i % 9990")}, {UID.format("11 + (i * 7 + 1 + i / 9990) % 9990")},
           (t AT TIME ZONE 'UTC')::date, t
      FROM (SELECT i, now() - (i % 8760) * interval '1 hour' AS t FROM generate_series(1, 300000) AS i) AS s
     WHERE i % 9990 <> (i * 7 + 1 + i / 9990) % 9990
        ON CONFLICT DO NOTHING;
    INSERT INTO thoughts (id, sender, receiver, utc_day, created_at)
    SELECT gen_random_uuid(), heavy, other, (t AT TIME ZONE 'UTC')::date, t
      FROM (SELECT CASE WHEN outgoing THEN {UID.format("u")} ELSE {UID.format("11 + d * 20 + k")} END AS heavy,
                   CASE WHEN outgoing THEN {UID.format("11 + d * 20 + k")} ELSE {UID.format("u")} END AS other,
                   now() - d * interval '1 day' - k * interval '1 minute' AS t
              FROM generate_series(1, 10) AS u, generate_series(0, 364) AS d, generate_series(0, 19) AS k,
                   (VALUES (true), (false)) AS direction(outgoing)) AS s
        ON CONFLICT DO NOTHING;
    ANALYZE;
"""


@pytest.fixture(scope="module")
async def seeded() -> AsyncIterator[asyncpg.Connection]:
    async with seeded_database("recipients", SEED) as conn:
        yield conn


async def test_both_lists_use_their_index(seeded: asyncpg.Connection) -> None:
    # Heavy users (5, 6) on their first page and further on, and a typical one (500).
    for who, after in ((5, storage.MAX_UUID), (6, uuid.UUID(int=1 << 127)), (500, storage.MAX_UUID)):
        no_scan(
            await plan(seeded, storage.OUTGOING_THOUGHTS, u=user(who), after=after, limit=21), "thoughts_outgoing_idx"
        )
        no_scan(
            await plan(seeded, storage.INCOMING_THOUGHTS, u=user(who), after=after, limit=21), "thoughts_incoming_idx"
        )


async def test_the_daily_rules_use_the_pair_day_key(seeded: asyncpg.Connection) -> None:
    today = utc_day(datetime.now(UTC))
    count = await plan(seeded, storage.THOUGHTS_SENT_ON, s=user(5), d=today)
    no_scan(count, "thoughts_sender_day_receiver_key")
    pair = await plan(seeded, storage.THOUGHT_TO_ON, s=user(5), d=today, r=user(36))
    no_scan(pair, "thoughts_sender_day_receiver_key")
