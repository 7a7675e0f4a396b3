"""The notifications tests run on the session `stack` (tests/conftest.py): capsules may unlock
1 s after they are sent, and a consumer's unacknowledged entries are taken over after 1 s
(STREAM_CLAIM_IDLE_MS).

    api               httpx.AsyncClient on its gateway (the session `client`)
    notifications_db  asyncpg connection to its notifications database (function-scoped)
    streams           redis client on its Redis (function-scoped)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis

from launcher.stack import Stack


@pytest.fixture
def api(client: Any) -> Any:
    return client


@pytest.fixture
async def notifications_db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    dsn = stack.database_urls["notifications"].replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def streams(stack: Stack) -> AsyncIterator[redis.Redis]:
    client: redis.Redis = redis.from_url(stack.redis_url)
    try:
        yield client
    finally:
        await client.aclose()
