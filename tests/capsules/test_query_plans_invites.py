"""The look-ups of invites (SPEC §13) are index hits on seeded volume: the capsules seed of
test_query_plans.py, plus 20,000 capsules waiting for their invite (300 of them claims begun and
left: the resumer's work) and 30,000 invites already claimed; each statement exactly as the
service sends it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from services.capsules import invites_storage as sql
from services.capsules import storage
from tests.capsules.test_query_plans import SEED as CAPSULES_SEED
from tests.capsules.test_query_plans import UID, user
from tests.query_plans import no_scan, plan, seeded_database

SEED = (
    CAPSULES_SEED
    + f"""
    INSERT INTO capsules (id, sender, recipient_id, recipient_user, title, body, unlocks_at)
    SELECT gen_random_uuid(), {UID.format("1 + i % 10000")}, gen_random_uuid(), NULL, 'for later ' || i,
           'waiting ' || i, now() + ((i * 7919) % 730 - 365) * interval '1 day'
      FROM generate_series(1, 20000) AS i;
    INSERT INTO invites (capsule_id, token, claimer, claim_started_at, sender_name)
    SELECT id, md5(id::text) || md5(title),
           CASE WHEN n % 66 = 0 THEN {UID.format("20000 + n")} END,
           CASE WHEN n % 66 = 0 THEN now() - interval '1 hour' END,
           CASE WHEN n % 66 = 0 THEN 'Ada' END
      FROM (SELECT id, title, row_number() OVER () AS n FROM capsules WHERE recipient_user IS NULL) AS waiting;
    INSERT INTO invites (capsule_id, token, claimer, claim_started_at, sender_name, claimed_at)
    SELECT id, md5(title) || md5(id::text), recipient_user, created_at, 'Ada', created_at
      FROM capsules WHERE recipient_user IS NOT NULL LIMIT 30000;
    ANALYZE;
"""
)
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
async def seeded() -> AsyncIterator[asyncpg.Connection]:
    async with seeded_database("capsules", SEED) as conn:
        yield conn


async def test_an_invite_is_found_by_its_token_or_its_capsule_through_their_keys(seeded: asyncpg.Connection) -> None:
    token, capsule = await seeded.fetchrow("SELECT token, capsule_id FROM invites WHERE claimer IS NULL LIMIT 1")
    no_scan(await plan(seeded, sql.BY_TOKEN, token=token), "invites_token_key", "capsules_pkey")
    no_scan(await plan(seeded, sql.BY_TOKEN, token="A" * 43), "invites_token_key")  # unknown: one probe
    no_scan(await plan(seeded, sql.BY_CAPSULE, capsule_id=capsule), "invites_pkey", "capsules_pkey")
    no_scan(await plan(seeded, sql.INVITE_OF_CAPSULE, capsule_id=capsule), "invites_pkey")
    no_scan(await plan(seeded, sql.INSERT_INVITE, capsule_id=capsule, token="B" * 43), "invites_pkey")


async def test_each_step_of_a_claim_touches_one_row_by_its_key(seeded: asyncpg.Connection) -> None:
    capsule = await seeded.fetchval("SELECT capsule_id FROM invites WHERE claimer IS NULL LIMIT 1")
    claimer = user(42)
    begin = await plan(seeded, sql.BEGIN_CLAIM, capsule_id=capsule, claimer=claimer, now=NOW, sender_name="Ada")
    no_scan(begin, "invites_pkey")
    no_scan(await plan(seeded, sql.ABANDON_CLAIM, capsule_id=capsule, claimer=claimer), "invites_pkey")
    no_scan(await plan(seeded, sql.DELIVER, capsule_id=capsule, claimer=claimer, now=NOW), "capsules_pkey")
    no_scan(await plan(seeded, sql.MARK_CLAIMED, capsule_id=capsule, claimer=claimer, now=NOW), "invites_pkey")


async def test_the_resumer_reads_only_unfinished_claims(seeded: asyncpg.Connection) -> None:
    no_scan(await plan(seeded, sql.UNFINISHED, before=NOW, limit=50), "invites_unfinished_idx")


async def test_the_unlocker_skips_capsules_waiting_for_their_invite_by_its_index(seeded: asyncpg.Connection) -> None:
    no_scan(await plan(seeded, storage.DUE, now=NOW, limit=100), "capsules_unlocker_idx")
