"""Every list and lookup of the capsules service is served by an index (SPEC §9), shown with
EXPLAIN on seeded data: a fresh database migrated by the real command, seeded with generate_series
(200,000 capsules between 10,000 users, unlock times a year either side of now, the past ones
mostly announced and a third opened; 100,000 self letters between the same users and 5,000 more by one
prolific author), analysed; each statement exactly as the service sends it must use its index and
never scan the table."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from services.capsules import self_letters_storage, storage
from services.common import idempotency
from tests.query_plans import IDEMPOTENCY_SEED, no_scan, plan, purge_plans, seeded_database


def user(i: int) -> uuid.UUID:
    return uuid.UUID(int=i + 1)


# Disappearing letters (SPEC §13): a tenth of the opened capsules vanish an hour after opening;
# those whose hour ended more than a day ago are erased, except a tenth of them (a backlog the
# eraser has not reached), which are due with the last day's.
DISAPPEARING_SEED = """
    UPDATE capsules SET disappear_after_seconds = 3600, disappears_at = opened_at + interval '1 hour',
           body = CASE WHEN erased THEN NULL ELSE body END,
           disappeared_at = CASE WHEN erased THEN opened_at + interval '1 hour' END
      FROM (SELECT id AS seeded_id,
                   opened_at + interval '1 hour' < now() - interval '1 day' AND title NOT LIKE '%13' AS erased
              FROM capsules WHERE opened_at IS NOT NULL AND title LIKE '%3') AS picked
     WHERE id = seeded_id
"""
UID = "lpad(to_hex({}), 32, '0')::uuid"
# Self letters: 100,000 between the same 10,000 users, opening a year either side of now, the past
# ones mostly opened and half of those answered; and one author with 5,000.
SELF_LETTERS_SEED = f"""
    INSERT INTO self_letters (id, author, body, life_area, opens_at, opened_at, reflection, reflected_at)
    SELECT gen_random_uuid(), {UID.format("1 + i % 10000")}, 'dear future me, number ' || i,
           (ARRAY['self', 'work', 'family', 'money', 'health'])[1 + i % 5], t,
           CASE WHEN t < now() AND i % 4 <> 0 THEN t END,
           CASE WHEN t < now() AND i % 4 <> 0 AND i % 2 = 0 THEN 'yes' END,
           CASE WHEN t < now() AND i % 4 <> 0 AND i % 2 = 0 THEN t END
      FROM (SELECT i, now() + ((i * 7919) % 730 - 365) * interval '1 day' AS t
              FROM generate_series(1, 100000) AS i) AS seed;
    INSERT INTO self_letters (id, author, body, life_area, opens_at)
    SELECT gen_random_uuid(), {UID.format("10001")}, 'one of many letters ' || i, 'self', now() + i * interval '1 hour'
      FROM generate_series(1, 5000) AS i
"""
PROLIFIC = 10000  # user(PROLIFIC): the author of the 5,000 letters
SEED = f"""
    INSERT INTO capsules (id, sender, recipient_id, recipient_user, title, body, unlocks_at,
                          opened_at, deleted_at, unlocked_event_at)
    SELECT gen_random_uuid(), {UID.format("1 + i % 10000")}, gen_random_uuid(),
           {UID.format("1 + (i * 7 + 1) % 10000")}, 'title ' || i, 'body ' || i, t,
           CASE WHEN t < now() AND i % 3 = 0 THEN t + interval '1 hour' END,
           CASE WHEN i % 50 = 0 THEN now() END,
           CASE WHEN t < now() - interval '1 minute' THEN t END
      FROM (SELECT i, now() + ((i * 7919) % 730 - 365) * interval '1 day'
                         + (i % 86400) * interval '1 second' AS t
              FROM generate_series(1, 200000) AS i) AS seed
     WHERE {UID.format("1 + i % 10000")} <> {UID.format("1 + (i * 7 + 1) % 10000")};
    {SELF_LETTERS_SEED};
    {IDEMPOTENCY_SEED};
    {DISAPPEARING_SEED};
    ANALYZE;
"""


@pytest.fixture(scope="module")
async def seeded() -> AsyncIterator[asyncpg.Connection]:
    async with seeded_database("capsules", SEED) as conn:
        yield conn


NOW = datetime.now(UTC)


def page_args(
    status: str, after: tuple[datetime, uuid.UUID] = (datetime(1, 1, 1, tzinfo=UTC), uuid.UUID(int=0))
) -> list[object]:
    """The positional arguments list_capsules sends: owner, keyset position, limit, [now]."""
    return [user(5), *after, 21, *([NOW] if "$5" in storage.STATUS_CONDITIONS[status] else [])]


async def test_inbox_and_outbox_pages_use_their_indexes_for_every_filter(seeded: asyncpg.Connection) -> None:
    for status in storage.STATUS_CONDITIONS:
        no_scan(await plan(seeded, storage.LISTS[("inbox", status)], *page_args(status)), "capsules_inbox_idx")
        no_scan(await plan(seeded, storage.LISTS[("outbox", status)], *page_args(status)), "capsules_outbox_idx")
    later = page_args("sealed", (NOW, uuid.UUID(int=0)))
    no_scan(await plan(seeded, storage.LISTS[("inbox", "sealed")], *later), "capsules_inbox_idx")


async def test_summary_uses_the_inbox_index(seeded: asyncpg.Connection) -> None:
    no_scan(await plan(seeded, storage.SUMMARY, u=user(9), now=NOW), "capsules_inbox_idx")


async def test_unlocker_batch_uses_its_partial_index(seeded: asyncpg.Connection) -> None:
    text = await plan(seeded, storage.DUE, now=NOW, limit=100)
    no_scan(text, "capsules_unlocker_idx")
    assert "LockRows" in text, text


async def test_capsule_lookup_by_id(seeded: asyncpg.Connection) -> None:
    capsule = await seeded.fetchval("SELECT id FROM capsules LIMIT 1")
    text = await plan(seeded, storage.CAPSULE, id=capsule)
    no_scan(text, "capsules_pkey")
    # The theme catalog is a handful of rows, read once an hour per page (cached): a scan of one
    # page is the right plan there, and themes_list_idx takes over if the catalog ever grows.


async def test_idempotency_key_purge_uses_the_created_index(seeded: asyncpg.Connection) -> None:
    (text,) = await purge_plans(seeded, idempotency.PURGE)
    no_scan(text, "idempotency_keys_created_idx", "LockRows", "Tid Scan")


async def test_self_letters_pages_use_the_author_index(seeded: asyncpg.Connection) -> None:
    # First and later pages of a typical author (10 letters) and of the prolific one come from the
    # index (for ten rows the planner may prefer a bitmap scan and a sort of those ten).
    for author in (user(5), user(PROLIFIC)):
        middle = await seeded.fetchval(
            "SELECT id FROM self_letters WHERE author = $1 ORDER BY id DESC LIMIT 1 OFFSET 5", author
        )
        for before in (self_letters_storage.FIRST_PAGE, middle):
            text = await plan(seeded, self_letters_storage.LIST, author=author, before=before, limit=21)
            no_scan(text, "self_letters_author_idx")
    # A prolific author: the page is read in index order, backwards, and stops at the limit.
    text = await plan(
        seeded, self_letters_storage.LIST, author=user(PROLIFIC), before=self_letters_storage.FIRST_PAGE, limit=21
    )
    assert "Index Scan Backward using self_letters_author_idx" in text and "Sort" not in text, text


async def test_self_letter_lookup_by_id(seeded: asyncpg.Connection) -> None:
    letter = await seeded.fetchval("SELECT id FROM self_letters LIMIT 1")
    no_scan(await plan(seeded, self_letters_storage.LETTER, id=letter), "self_letters_pkey")
