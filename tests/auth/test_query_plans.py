"""Every hot auth query is served by an index (SPEC §9), shown with EXPLAIN on seeded data.

A fresh database is migrated by the real migration command, seeded with 100,000 users through
generate_series, analysed, and each query's plan is checked for the index it must use and for the
absence of a sequential scan on users. (Below ~50,000 rows the planner rightly prefers a scan for
the fuzzy tier; the volume here is where the indexes must take over.)
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.auth.storage import SEARCH
from tests.query_plans import IDEMPOTENCY_SEED, no_scan, plan, purge_plans, seeded_database

# Refresh tokens as they stand with the purge running: 40,000 sessions of 5 tokens, live with old
# spent tokens, but for one in a hundred that ended (expired or logged out) past the retention.
REFRESH_SEED = """
    INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, created_at, expires_at, used_at, revoked_at)
    SELECT gen_random_uuid(), lpad(to_hex(1 + i / 5), 32, '0')::uuid, u.id, sha256(i::text::bytea),
           now() - (90 - i % 5) * interval '1 day', now() + (CASE WHEN ended THEN -40 ELSE 30 END) * interval '1 day'
                                                 - (4 - i % 5) * interval '1 day',
           CASE WHEN i % 5 < 4 THEN now() - (89 - i % 5) * interval '1 day' END,
           CASE WHEN ended AND i % 1000 = 4 THEN now() - interval '9 days' END
      FROM (SELECT i, (i / 5) % 100 = 0 AS ended FROM generate_series(0, 199999) AS i) AS seed,
           (SELECT id FROM users LIMIT 1) AS u
"""


SEED = f"""
    INSERT INTO users (id, email, username, password_hash, first_name, last_name)
    SELECT gen_random_uuid(), 'user' || i || '@example.com', 'user' || i, 'x',
           (ARRAY['anna','bruno','chloe','dmitri','elif','farah','goran','hana'])[1 + i % 8] || i % 97,
           (ARRAY['martin','nguyen','okafor','petrov','quinn','rossi','sato','tanaka'])[1 + i % 7] || i % 89
      FROM generate_series(1, 100000) AS i;
    {REFRESH_SEED};
    {IDEMPOTENCY_SEED};
    ANALYZE;
"""


@pytest.fixture(scope="module")
async def seeded() -> AsyncIterator[asyncpg.Connection]:
    async with seeded_database("auth", SEED) as conn:
        yield conn


async def test_point_lookups_use_unique_indexes(seeded: asyncpg.Connection) -> None:
    by_email = await plan(seeded, "SELECT * FROM users WHERE lower(email) = lower($1)", "user7@example.com")
    assert "users_email_lower_key" in by_email
    by_username = await plan(seeded, "SELECT * FROM users WHERE username = $1", "user7")
    assert "users_username_key" in by_username
    refresh = await plan(seeded, "SELECT * FROM refresh_tokens WHERE token_hash = $1", b"x" * 32)
    assert "refresh_tokens_hash_key" in refresh


@pytest.mark.parametrize("query", ["user12", "anna", "tanaka3", "user77@example.com", "chlo"])
async def test_search_uses_indexes_and_never_scans_users(seeded: asyncpg.Connection, query: str) -> None:
    q = query.lower()
    values = {
        "q": q,
        "prefix": q + "%",
        "is_email": "@" in q,
        "fuzzy": len(q) >= 3,
        "caller": uuid.uuid4(),
        "blocked": [uuid.uuid4()],
        "after_tier": -1,
        "after_username": "",
        "limit": 11,
    }
    text = await plan(seeded, SEARCH, **values)  # exactly as the service sends it
    assert "Seq Scan on users" not in text, text
    assert "users_username_key" in text
    assert "users_first_name_prefix_idx" in text or "users_full_name_trgm_idx" in text, text


async def test_refresh_token_purge_walks_ended_sessions_only(seeded: asyncpg.Connection) -> None:
    from services.auth.storage import refresh_tokens_purge

    spent, last = await purge_plans(seeded, refresh_tokens_purge(7 * 24 * 3600))
    for text in (spent, last):
        no_scan(text, "refresh_tokens_session_end_idx", "refresh_tokens_family_idx", "LockRows", "Tid Scan")


async def test_idempotency_key_purge_uses_the_created_index(seeded: asyncpg.Connection) -> None:
    from services.common.idempotency import PURGE

    (text,) = await purge_plans(seeded, PURGE)
    no_scan(text, "idempotency_keys_created_idx", "LockRows", "Tid Scan")
