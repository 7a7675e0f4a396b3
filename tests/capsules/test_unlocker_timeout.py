"""The unlocker publishes while its batch's rows are locked (FOR UPDATE): a Redis that stops
answering must not hold those locks. Against a real Postgres (a scratch capsules database) and a
private redis-server the test freezes; the client has no socket timeout of its own, so only the
unlocker's bound can end the wait."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
import redis.asyncio as redis

from services.capsules.unlocker import Unlocker
from services.common.db import Database
from services.common.settings import DatabaseSettings
from tests.query_plans import ADMIN_DSN, scratch_database
from tests.ratelimit.redis_server import RedisServer

DUE = """
    INSERT INTO capsules (id, sender, recipient_id, recipient_user, body, unlocks_at)
    SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'b', now() - interval '1 minute'
      FROM generate_series(1, 10)
"""


async def test_a_frozen_redis_does_not_hold_the_batch_locks(redis_server: RedisServer) -> None:
    async with scratch_database("capsules") as conn:
        await conn.execute(DUE)
        name = await conn.fetchval("SELECT current_database()")
        url = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
        db = Database(DatabaseSettings(url, pool_size=2))
        client = redis.from_url(redis_server.url)  # no socket timeout: it would wait forever
        unlocker = Unlocker(db, client, stream="test:ready", publish_timeout_seconds=0.5)
        redis_server.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(unlocker.run_once(), timeout=10)
            assert time.monotonic() - started < 3, "the publish must give up within its own bound"
            # The batch's locks are gone and nothing was marked: the next pass publishes them.
            async with conn.transaction():
                locked = await conn.fetch("SELECT id FROM capsules FOR UPDATE NOWAIT")
            assert len(locked) == 10
            assert await conn.fetchval("SELECT count(*) FROM capsules WHERE unlocked_event_at IS NULL") == 10
        except asyncpg.LockNotAvailableError:
            raise AssertionError("the unlocker still holds the batch's row locks") from None
        finally:
            redis_server.thaw()
            await client.aclose()
            await db.close()
