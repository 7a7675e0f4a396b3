"""The look-ups of replies and countdown shares (SPEC §13) are index hits on seeded volume: the
capsules seed of test_query_plans.py plus a reply on every third opened capsule (~20,000) and
100,000 shares over 50,000 capsules; each statement exactly as the service sends it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.capsules import replies_shares_storage as sql
from tests.capsules.test_query_plans import SEED as CAPSULES_SEED
from tests.capsules.test_query_plans import user
from tests.query_plans import no_scan, plan, seeded_database

SEED = (
    CAPSULES_SEED
    + """
    INSERT INTO capsule_replies (id, capsule_id, author, text, emoji)
    SELECT gen_random_uuid(), id, recipient_user, 'thanks', '🙏'
      FROM capsules WHERE opened_at IS NOT NULL AND ('x' || substr(md5(id::text), 1, 2))::bit(8)::int % 3 = 0;
    INSERT INTO capsule_shares (id, capsule_id, token, kind, sender_name, created_by)
    SELECT gen_random_uuid(), c.id, md5(c.id::text || k) || md5(k || c.id::text), 'link', 'Ada', c.recipient_user
      FROM (SELECT id, recipient_user FROM capsules WHERE unlocks_at > now() LIMIT 50000) AS c,
           (VALUES ('a'), ('b')) AS kinds (k);
    ANALYZE;
"""
)


@pytest.fixture(scope="module")
async def seeded() -> AsyncIterator[asyncpg.Connection]:
    async with seeded_database("capsules", SEED) as conn:
        yield conn


async def test_reply_lookups_use_the_unique_capsule_index_and_the_primary_key(seeded: asyncpg.Connection) -> None:
    capsule, reply = await seeded.fetchrow("SELECT capsule_id, id FROM capsule_replies LIMIT 1")
    text = await plan(seeded, sql.REPLY_OF_CAPSULE, capsule_id=capsule)
    no_scan(text, "capsule_replies_capsule_key", "capsules_pkey")
    no_scan(await plan(seeded, sql.REPLY_BY_ID, id=reply), "capsule_replies_pkey")


async def test_share_lookups_by_token_and_by_capsule_use_their_indexes(seeded: asyncpg.Connection) -> None:
    token, capsule, share = await seeded.fetchrow("SELECT token, capsule_id, id FROM capsule_shares LIMIT 1")
    no_scan(await plan(seeded, sql.SHARED, token=token), "capsule_shares_token_key", "capsules_pkey")
    # A capsule's few shares (at most 20): an index (or bitmap index) scan, never the table's.
    no_scan(await plan(seeded, sql.LIVE_SHARES, capsule_id=capsule), "capsule_shares_capsule_idx")
    no_scan(await plan(seeded, sql.SHARE_BY_ID, id=share), "capsule_shares_pkey")
    revoke = await plan(seeded, sql.REVOKE_SHARE, token=token, capsule_id=capsule, caller=user(3))
    no_scan(revoke, "capsule_shares_token_key", "capsules_pkey")
    # An unknown token costs one index probe too.
    no_scan(await plan(seeded, sql.SHARED, token=uuid.uuid4().hex * 2), "capsule_shares_token_key")
