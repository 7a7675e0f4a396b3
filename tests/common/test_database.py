"""services.common.db.Database against a real Postgres: reads without transaction round trips,
pre-ping only after idleness, and connections that died under it never reused.

Server-side deaths are real: the test terminates the pool's backend with pg_terminate_backend.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from services.common.db import Database
from services.common.errors import Unavailable
from services.common.settings import DatabaseSettings
from tests.query_plans import ADMIN_DSN, scratch_database


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with scratch_database("capsules") as conn:
        name = await conn.fetchval("SELECT current_database()")
        yield ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"


def database(url: str, *, idle_ping_after: float) -> Database:
    # One connection, so "the pool's connection" is always the same one unless it was replaced.
    return Database(DatabaseSettings(url, pool_size=1, max_overflow=0, pool_pre_ping_idle_seconds=idle_ping_after))


async def backend_pid(db: Database) -> int:
    async with db.driver_read() as conn:
        return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def terminate(pid: int) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        gone = False
        while not gone:  # polling until the backend has exited
            gone = not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)
            await asyncio.sleep(0.01)
    finally:
        await admin.close()


async def state_of(pid: int) -> str:
    """The backend's state as Postgres sees it ('idle' or 'idle in transaction' between statements)."""
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        return str(await admin.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid))
    finally:
        await admin.close()


async def test_reads_leave_no_transaction_open_and_writes_keep_one(url: str) -> None:
    db = database(url, idle_ping_after=5)
    pid = text("SELECT pg_backend_pid()")
    try:
        async with db.read() as conn:
            assert await state_of((await conn.execute(pid)).scalar_one()) == "idle"
        async with db.driver_read() as driver:
            assert await state_of(await driver.fetchval("SELECT pg_backend_pid()")) == "idle"
        async with db.write() as conn:
            assert await state_of((await conn.execute(pid)).scalar_one()) == "idle in transaction"
    finally:
        await db.close()


async def test_an_idle_connection_that_died_is_replaced_before_use(url: str) -> None:
    db = database(url, idle_ping_after=0.05)
    try:
        first = await backend_pid(db)
        await terminate(first)
        await asyncio.sleep(0.1)  # the behaviour under test: the connection has now been idle long enough
        second = await backend_pid(db)  # no error: the ping found it dead, the pool opened another
        assert second != first
    finally:
        await db.close()


async def test_a_busy_connection_that_died_fails_once_with_unavailable_and_is_never_reused(url: str) -> None:
    db = database(url, idle_ping_after=3600)  # never idle long enough to be pinged
    try:
        first = await backend_pid(db)
        await terminate(first)
        with pytest.raises(Unavailable):
            await backend_pid(db)
        assert await backend_pid(db) != first
    finally:
        await db.close()


async def test_a_bad_statement_on_the_driver_is_not_mistaken_for_a_lost_connection(url: str) -> None:
    db = database(url, idle_ping_after=3600)
    try:
        first = await backend_pid(db)
        with pytest.raises(asyncpg.InterfaceError):
            async with db.driver_read() as conn:
                await conn.fetch("SELECT $1::int", 1, 2)  # one argument too many
        assert await backend_pid(db) == first, "the healthy connection must stay in the pool"
    finally:
        await db.close()


async def test_a_database_that_refuses_more_connections_is_unavailable_not_an_internal_error(url: str) -> None:
    # "too many connections" reaches SQLAlchemy as a generic DBAPIError: it must still be UNAVAILABLE.
    role = f"full_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex  # trust or password authentication alike: the role gets in, then is refused
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' CONNECTION LIMIT 0")
    try:
        limited = make_url(url).set(username=role, password=password).render_as_string(hide_password=False)
        db = database(limited, idle_ping_after=5)
        try:
            with pytest.raises(Unavailable):
                await backend_pid(db)
        finally:
            await db.close()
    finally:
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
