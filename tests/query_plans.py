"""Helpers of the EXPLAIN tests (SPEC §9: indexes back every hot query): a scratch database
migrated by a service's real command, and the plan of a statement exactly as the service sends it."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import TextClause
from sqlalchemy.dialects import postgresql

ADMIN_DSN = os.environ.get("TEST_POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@asynccontextmanager
async def scratch_database(service: str) -> AsyncIterator[asyncpg.Connection]:
    """A fresh database migrated by `python -m services.<service> migrate`; dropped afterwards."""
    name = f"{service}_plans_{uuid.uuid4().hex[:8]}"
    base = ADMIN_DSN.rsplit("/", 1)[0]
    env = {**os.environ, "DATABASE_URL": base.replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"}
    migrate = await asyncio.create_subprocess_exec(sys.executable, "-m", f"services.{service}", "migrate", env=env)
    assert await migrate.wait() == 0
    conn = await asyncpg.connect(f"{base}/{name}")
    try:
        yield conn
    finally:
        await conn.close()
        admin = await asyncpg.connect(ADMIN_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def plan(conn: asyncpg.Connection, statement: TextClause | str, *args: Any, **values: Any) -> str:
    """EXPLAIN of a statement exactly as the service sends it: a text() clause compiled for
    asyncpg with `values` bound by name, or driver-level SQL (`$n`) with positional `args`."""
    if isinstance(statement, str):
        sql, bound = statement, list(args)
    else:
        compiled = statement.compile(dialect=postgresql.asyncpg.dialect())  # type: ignore[attr-defined]
        sql, bound = str(compiled), [values[n] for n in compiled.positiontup or []]
    rows = await conn.fetch("EXPLAIN " + sql, *bound)
    return "\n".join(r[0] for r in rows)


# A day and an hour of idempotency keys (100,000, one every second or so): what the table holds
# with the purge running, the last hour's worth past SPEC §3's 24 hours and due for the purge.
IDEMPOTENCY_SEED = """
    INSERT INTO idempotency_keys (operation, caller, key, request_hash, created_at)
    SELECT 'op', 'caller ' || i % 5000, 'key ' || i, '\\x00', now() - (i % 90000) * interval '1 second'
      FROM generate_series(1, 100000) AS i
"""


def no_scan(text: str, *indexes: str) -> None:
    assert "Seq Scan" not in text, text
    for index in indexes:
        assert index in text, text


async def purge_plans(conn: asyncpg.Connection, target: Any, seed: str, batch: int = 500) -> list[str]:
    """EXPLAIN of each step of a purge `Target` (services/common/purge.py) once `seed` is inserted
    and analysed, in a transaction rolled back afterwards: the module's other checks keep their data."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(seed)
        await conn.execute(f"ANALYZE {target.table}")
        return [await plan(conn, step, **target.params, limit=batch) for step in target.steps]
    finally:
        await transaction.rollback()
