"""Concurrency: one idempotency key under 50 parallel creates; keyset paging over 5,000 inbox
rows while rows are inserted; two unlocker processes over 1,000 due capsules."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from launcher.infra import Infra
from launcher.stack import Stack
from services.capsules import storage
from services.capsules.unlocker import Unlocker
from services.common.db import Database
from services.common.settings import DatabaseSettings
from tests.capsules.helpers import assert_problem, at, bearer, eventually, pair, send, uid
from tests.conftest import Processes
from tests.replica import replayed

pytestmark = pytest.mark.slow(12)  # scheduled first: see tests/conftest.py


async def test_fifty_parallel_creates_with_one_key_leave_one_capsule(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    a, b, to_b = await pair(api)
    key = f"create-{uuid.uuid4()}"
    fields = {"title": "once", "body": "only once", "unlocksAt": at(3600)}
    responses = await asyncio.gather(*(send(api, a, to_b, key=key, **fields) for _ in range(50)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await capsules_db.fetchval("SELECT count(*) FROM capsules WHERE sender = $1::uuid", uid(a)) == 1
    # The same key for other fields: refused, nothing written; another caller's same key is theirs.
    reused = await send(api, a, to_b, key=key, title="different", body="other", unlocksAt=fields["unlocksAt"])
    assert_problem(reused, 409, "IDEMPOTENCY_KEY_REUSED", ["idempotencyKey"])
    assert await capsules_db.fetchval("SELECT count(*) FROM capsules WHERE sender = $1::uuid", uid(a)) == 1
    inbox = await api.get("/v1/capsules:summary", headers=bearer(b))
    assert inbox.json()["total"] == "1"
    # A retry after the relationship ended still gets the first capsule (it was sent).
    assert (await api.post("/v1/blocks", json={"userId": uid(a)}, headers=bearer(b))).status_code == 200
    retried = await send(api, a, to_b, key=key, **fields)
    assert retried.status_code == 200 and retried.json()["id"] == responses[0].json()["id"]
    assert_problem(await send(api, a, to_b, key=f"{key}-new", **fields), 400, "NOT_CONNECTED", ["recipientId"])
    assert await capsules_db.fetchval("SELECT count(*) FROM capsules WHERE sender = $1::uuid", uid(a)) == 1


async def test_paging_five_thousand_inbox_rows_while_rows_are_inserted(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection, infra: Infra
) -> None:
    a, b, to_b = await pair(api)
    # 5,000 capsules to B, unlock times in the future, many sharing the same instant (ties → id).
    await capsules_db.execute(
        """
        INSERT INTO capsules (id, sender, recipient_id, recipient_user, title, body, unlocks_at)
        SELECT gen_random_uuid(), $1::uuid, $2::uuid, $3::uuid, 'seeded ' || i, 'body',
               date_trunc('hour', now()) + interval '1 day' + (i % 700) * interval '1 minute'
          FROM generate_series(1, 5000) AS i
        """,
        uid(a),
        to_b,
        uid(b),
    )
    original = {
        str(r["id"]) for r in await capsules_db.fetch("SELECT id FROM capsules WHERE recipient_user = $1::uuid", uid(b))
    }
    assert len(original) == 5000
    await replayed(infra)  # the inbox may be read from the standby

    stop = asyncio.Event()

    async def insert_meanwhile() -> int:
        count = 0
        while not stop.is_set():
            response = await send(api, a, to_b, unlocksAt=at(86400 + (count * 997) % 50000))
            assert response.status_code == 200, response.text
            count += 1
        return count

    inserter = asyncio.create_task(insert_meanwhile())
    seen: list[str] = []
    keys: list[tuple[str, str]] = []
    token = ""
    try:
        while True:
            response = await api.get(
                "/v1/capsules", params={"box": "inbox", "pageSize": 100, "pageToken": token}, headers=bearer(b)
            )
            assert response.status_code == 200, response.text
            body = response.json()
            for row in body["capsules"]:
                seen.append(row["id"])
                keys.append((row["unlocksAt"], row["id"]))
                assert row["body"] == ""  # sealed
            token = body["nextPageToken"]
            if not token:
                break
    finally:
        stop.set()
        inserted = await inserter
    assert inserted > 0
    assert len(seen) == len(set(seen)), "a row came twice"
    assert original <= set(seen), f"{len(original - set(seen))} rows skipped"
    parsed = [(datetime.fromisoformat(t.replace("Z", "+00:00")), uuid.UUID(i)) for t, i in keys]
    assert parsed == sorted(parsed), "not ordered by unlocks_at then id"


@pytest.fixture
async def scratch_db() -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """A fresh capsules database migrated by the real command: (its SQLAlchemy URL, a connection)."""
    admin_dsn = os.environ["TEST_POSTGRES_ADMIN_DSN"]
    base = admin_dsn.rsplit("/", 1)[0]
    name = f"capsules_unlock_{uuid.uuid4().hex[:8]}"
    url = base.replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    migrate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.capsules", "migrate", env={**os.environ, "DATABASE_URL": url}
    )
    assert await migrate.wait() == 0
    conn = await asyncpg.connect(f"{base}/{name}")
    try:
        yield url, conn
    finally:
        await conn.close()
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def drop_stream(client: redis.Redis, stream: str) -> None:
    keys: list[Any] = [stream]
    async for key in client.scan_iter(match=f"{stream}:sent:*", count=1000):
        keys.append(key)
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start : start + 500])


DUE_SQL = """
    INSERT INTO capsules (id, sender, recipient_id, recipient_user, body, unlocks_at)
    SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'b',
           now() - (i % 50) * interval '1 second'
      FROM generate_series(1, $1::int) AS i
"""


async def test_two_unlockers_publish_exactly_one_event_per_due_capsule(
    stack: Stack, processes: Processes, scratch_db: tuple[str, asyncpg.Connection]
) -> None:
    """1,000 due capsules (and some deleted or not yet due) in a scratch database, two
    `python -m services.capsules unlocker` processes on a fresh stream."""
    url, conn = scratch_db
    stream = f"{stack.cache_prefix}unlock-test:{uuid.uuid4().hex[:8]}"
    client = redis.from_url(stack.redis_url)
    try:
        await conn.execute(DUE_SQL, 1000)
        await conn.execute(
            """
            -- Neither due nor announced: deleted, and not yet due.
            INSERT INTO capsules (id, sender, recipient_id, recipient_user, body, unlocks_at, deleted_at)
            SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'b', now(), now()
              FROM generate_series(1, 10);
            INSERT INTO capsules (id, sender, recipient_id, recipient_user, body, unlocks_at)
            SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'b',
                   now() + interval '1 day'
              FROM generate_series(1, 10);
            """
        )
        env = {
            "DATABASE_URL": url,
            "REDIS_URL": stack.redis_url,
            "CAPSULE_READY_STREAM": stream,
            "CAPSULE_UNLOCKER_BATCH_SIZE": "50",
            "CAPSULE_UNLOCKER_INTERVAL_SECONDS": "0.2",
        }
        workers = [
            processes.start(f"unlocker-{i}", [sys.executable, "-m", "services.capsules", "unlocker"], env=env)
            for i in range(2)
        ]

        async def all_published() -> bool | None:
            left = await conn.fetchval(
                "SELECT count(*) FROM capsules WHERE unlocked_event_at IS NULL AND deleted_at IS NULL "
                "AND unlocks_at <= now()"
            )
            return True if left == 0 and await client.xlen(stream) >= 1000 else None

        await eventually(all_published, within=60, every=0.2)
        # A little longer than a few idle passes: nothing more may arrive.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert await client.xlen(stream) == 1000
            await asyncio.sleep(0.1)
        for worker in workers:
            assert worker.stop(15) == 0
        entries: Any = await client.xrange(stream)
        ids = [fields[b"capsule_id"].decode() for _, fields in entries]
        assert len(ids) == 1000 and len(set(ids)) == 1000
        due = {str(r["id"]) for r in await conn.fetch("SELECT id FROM capsules WHERE unlocked_event_at IS NOT NULL")}
        assert set(ids) == due
    finally:
        await drop_stream(client, stream)
        await client.aclose()


async def test_a_commit_lost_after_publishing_does_not_announce_twice(
    stack: Stack, scratch_db: tuple[str, asyncpg.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publish precedes the COMMIT: when the transaction fails after it, the rows stay
    unannounced and the next pass takes them again; the per-capsule marker keeps the stream at one
    entry each."""
    url, conn = scratch_db
    await conn.execute(DUE_SQL, 120)
    stream = f"{stack.cache_prefix}unlock-test:{uuid.uuid4().hex[:8]}"
    client = redis.from_url(stack.redis_url)
    db = Database(DatabaseSettings(url=url, pool_size=2, max_overflow=0))
    unlocker = Unlocker(db, client, stream=stream, batch_size=100)
    try:

        async def lost_commit(*args: Any) -> None:
            raise ConnectionError("connection lost before COMMIT")

        with monkeypatch.context() as patch:
            patch.setattr(storage, "mark_published", lost_commit)
            with pytest.raises(ConnectionError):
                await unlocker.run_once()
        assert await client.xlen(stream) == 100  # published, but not recorded
        assert await conn.fetchval("SELECT count(*) FROM capsules WHERE unlocked_event_at IS NOT NULL") == 0
        assert await unlocker.run_once() == 100  # the same 100 again, now recorded
        assert await unlocker.run_once() == 20
        assert await unlocker.run_once() == 0
        entries: Any = await client.xrange(stream)
        ids = [fields[b"capsule_id"].decode() for _, fields in entries]
        assert len(ids) == 120 and len(set(ids)) == 120
    finally:
        await drop_stream(client, stream)
        await client.aclose()
        await db.close()
