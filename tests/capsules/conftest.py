"""The capsules tests run on the session `stack` (tests/conftest.py), whose capsules may unlock
CAPSULE_LEAD_SECONDS after they are sent, so tests see them turn ready.

    api             httpx.AsyncClient on its gateway (the session `client`)
    capsules_db     asyncpg connection to its capsules database (function-scoped)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from launcher.stack import Stack


@pytest.fixture
def api(client: Any) -> Any:
    return client


@pytest.fixture
async def capsules_db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    dsn = stack.database_urls["capsules"].replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()
