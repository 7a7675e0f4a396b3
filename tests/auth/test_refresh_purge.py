"""The purge of dead refresh tokens (services/auth/storage.refresh_tokens_purge) against a real
Postgres. It removes a token dead (expired or revoked) for longer than the retention, but never
one whose family can still be refreshed: SPEC §3's reuse detection (a rotated token presented
again revokes its family) must keep working for every live session, however old its spent tokens."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import asyncpg
import httpx
from prometheus_client import REGISTRY

from launcher.stack import Stack
from services.auth.storage import refresh_tokens_purge
from services.common.db import Database
from services.common.purge import Purger
from services.common.settings import DatabaseSettings, PurgeSettings
from tests.query_plans import ADMIN_DSN, scratch_database

WEEK = 7 * 24 * 3600
PASSWORD = "correct horse battery"


def purged() -> float:
    return REGISTRY.get_sample_value("purged_rows_total", {"table": "refresh_tokens"}) or 0.0


def purger(url: str, batch_size: int = 2) -> Purger:
    db = Database(DatabaseSettings(url, pool_size=2, max_overflow=0))
    return Purger(db, [refresh_tokens_purge(WEEK)], PurgeSettings(batch_size=batch_size))


def sqlalchemy_url(name: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"


# One row of a family: (label, created, expires, used, revoked) as offsets from now (SQL intervals).
TOKEN = """
    INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, created_at, expires_at, used_at, revoked_at)
    VALUES (gen_random_uuid(), $1, $2, sha256($3::text::bytea), now() + $4::text::interval,
            now() + $5::text::interval, now() + $6::text::interval, now() + $7::text::interval)
"""

FAMILIES: dict[str, list[tuple[str, str, str | None, str | None]]] = {
    # created, expires, used, revoked
    "ended long ago": [
        ("-70 days", "-40 days", "-69 days", None),
        ("-69 days", "-39 days", None, None),
    ],
    "logged out last week": [
        ("-20 days", "10 days", "-19 days", "-8 days"),
        ("-19 days", "11 days", None, "-8 days"),
    ],
    "logged out yesterday": [("-5 days", "25 days", None, "-1 day")],
    "expired two days ago": [("-32 days", "-2 days", None, None)],
    "ended after many rotations": [
        *((f"-{60 - i} days", f"-{30 - i} days", f"-{59 - i} days", None) for i in range(12)),
        ("-48 days", "-18 days", None, None),
    ],
    "alive for months": [  # rotated four times; three of its spent tokens expired long ago
        ("-90 days", "-60 days", "-89 days", None),
        ("-89 days", "-59 days", "-60 days", None),
        ("-60 days", "-30 days", "-31 days", None),
        ("-31 days", "-1 day", "-2 days", None),
        ("-2 days", "28 days", None, None),  # the token the client holds now
    ],
}
GONE = {"ended long ago", "logged out last week", "ended after many rotations"}


async def test_a_pass_removes_exactly_the_dead_families_past_the_retention() -> None:
    async with scratch_database("auth") as conn:
        user = uuid.uuid4()
        await conn.execute(
            "INSERT INTO users (id, email, username, password_hash) VALUES ($1, 'a@example.com', 'ada', 'x')", user
        )
        family_ids = {label: uuid.uuid4() for label in FAMILIES}
        for label, rows in FAMILIES.items():
            for i, (created, expires, used, revoked) in enumerate(rows):
                await conn.execute(TOKEN, family_ids[label], user, f"{label} {i}", created, expires, used, revoked)
        job = purger(sqlalchemy_url(await conn.fetchval("SELECT current_database()")))
        before = purged()
        try:
            removed = await job.run_once()
        finally:
            await job.db.close()

        expected = sum(len(FAMILIES[label]) for label in GONE)
        assert removed == {"refresh_tokens": expected}
        assert purged() - before == expected
        left = await family_counts(conn)
        assert left == {family_ids[label]: len(rows) for label, rows in FAMILIES.items() if label not in GONE}


async def family_counts(conn: asyncpg.Connection) -> dict[uuid.UUID, int]:
    rows = await conn.fetch("SELECT family_id, count(*) FROM refresh_tokens GROUP BY family_id")
    return {row[0]: row[1] for row in rows}


# Families 1..3000 ended 20 days ago after 0 to 4 rotations; families 100001..100500 are live
# sessions whose two spent tokens expired two months ago.
SESSIONS = """
    INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, created_at, expires_at, used_at)
    SELECT gen_random_uuid(), lpad(to_hex(f), 32, '0')::uuid, $1, sha256(('ended ' || f || ' ' || k)::bytea),
           now() - interval '60 days', now() - interval '20 days',
           CASE WHEN k < f % 5 THEN now() - interval '59 days' END
      FROM generate_series(1, 3000) AS f, generate_series(0, 4) AS k
     WHERE k <= f % 5;
    INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, created_at, expires_at, used_at)
    SELECT gen_random_uuid(), lpad(to_hex(100000 + f), 32, '0')::uuid, $1,
           sha256(('live ' || f || ' ' || k)::bytea),
           now() - CASE WHEN k < 2 THEN interval '90 days' ELSE interval '1 day' END,
           now() + CASE WHEN k < 2 THEN interval '-60 days' ELSE interval '20 days' END,
           CASE WHEN k < 2 THEN now() - interval '61 days' END
      FROM generate_series(1, 500) AS f, generate_series(0, 2) AS k
"""


async def test_passes_at_once_remove_every_ended_session_once_and_orphan_nothing() -> None:
    async with scratch_database("auth") as conn:
        user = uuid.uuid4()
        await conn.execute(
            "INSERT INTO users (id, email, username, password_hash) VALUES ($1, 'b@example.com', 'bob', 'x')", user
        )
        for statement in SESSIONS.split(";"):
            await conn.execute(statement, user)
        ended = await conn.fetchval(
            "SELECT count(*) FROM refresh_tokens WHERE family_id < lpad(to_hex(100000), 32, '0')::uuid"
        )
        url = sqlalchemy_url(await conn.fetchval("SELECT current_database()"))
        jobs = [purger(url, batch_size=50), purger(url, batch_size=50)]
        before = purged()
        removed = [0, 0]
        try:
            # Passes at once, until neither finds anything: a pass may end early when the other
            # holds the rows it would take next (SKIP LOCKED), the next pass then goes on.
            for _ in range(20):
                passes = await asyncio.wait_for(asyncio.gather(*(j.run_once() for j in jobs)), timeout=120)
                counts = [p["refresh_tokens"] for p in passes]
                removed = [r + c for r, c in zip(removed, counts, strict=True)]
                if counts == [0, 0]:
                    break
        finally:
            await asyncio.gather(*(j.db.close() for j in jobs))

        assert all(removed), f"both passes took part: {removed}"
        assert sum(removed) == ended, (removed, ended)
        assert purged() - before == ended
        left = await conn.fetch("SELECT family_id, count(*) AS n FROM refresh_tokens GROUP BY family_id")
        assert {row["n"] for row in left} == {3} and len(left) == 500, "only the live sessions are left, whole"


# --- through the mesh: rotation and reuse detection after a purge ------------------------------


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def session(client: httpx.AsyncClient) -> dict[str, Any]:
    name = f"p{uuid.uuid4().hex[:10]}"
    body = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    response = await client.post("/v1/auth:signup", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/v1/auth:refresh", json={"refreshToken": token})


async def test_after_a_purge_a_live_session_still_rotates_and_a_reused_old_token_still_revokes_it(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    first = (await session(client))["refreshToken"]
    second = (await refresh(client, first)).json()["refreshToken"]
    third = (await refresh(client, second)).json()["refreshToken"]
    ended = (await session(client))["refreshToken"]
    assert (await client.post("/v1/auth:logout", json={"refreshToken": ended})).status_code == 200

    url = stack.database_urls["auth"]
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        # The session has lived for months: its spent tokens expired long ago. The other one
        # was logged out more than the retention ago.
        await conn.execute(
            "UPDATE refresh_tokens SET created_at = now() - interval '60 days', expires_at = now() - interval '30 days'"
            " WHERE token_hash = ANY($1)",
            [token_hash(first), token_hash(second)],
        )
        await conn.execute(
            "UPDATE refresh_tokens SET revoked_at = now() - interval '8 days' WHERE token_hash = $1", token_hash(ended)
        )
        job = purger(url)
        try:
            await job.run_once()
        finally:
            await job.db.close()
        remaining = await conn.fetchval(
            "SELECT count(*) FROM refresh_tokens WHERE token_hash = ANY($1)",
            [token_hash(t) for t in (first, second, third, ended)],
        )
        assert remaining == 3, "the purge ran: the logged-out session is gone, the live one kept whole"
    finally:
        await conn.close()

    rotated = await refresh(client, third)
    assert rotated.status_code == 200, rotated.text
    reused = await refresh(client, first)
    assert reused.status_code == 401 and reused.json()["reason"] == "REFRESH_TOKEN_REUSED", reused.text
    after = await refresh(client, rotated.json()["refreshToken"])
    assert after.status_code == 401 and after.json()["reason"] == "TOKEN_INVALID", "the family was revoked"
