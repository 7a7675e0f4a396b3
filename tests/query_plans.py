"""Helpers of the EXPLAIN tests (SPEC §9: indexes back every hot query): a scratch database
migrated by a service's real command (and seeded), cloned from a template built once, and the plan
of a statement exactly as the service sends it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import TextClause
from sqlalchemy.dialects import postgresql

REPO = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("TEST_POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@asynccontextmanager
async def scratch_database(service: str, seed: str = "") -> AsyncIterator[asyncpg.Connection]:
    """A fresh database migrated by `python -m services.<service> migrate`, with `seed` (SQL) run in
    it; dropped afterwards. Cloned from a template built once (`clone_template`)."""
    name = f"{service}_plans_{uuid.uuid4().hex[:8]}"
    base = ADMIN_DSN.rsplit("/", 1)[0]
    await clone_template(service, seed, name)
    conn = await asyncpg.connect(f"{base}/{name}")
    try:
        yield conn
    finally:
        await conn.close()
        admin = await asyncpg.connect(ADMIN_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def seeded_database(service: str, seed: str) -> AsyncIterator[asyncpg.Connection]:
    """A read-only connection to the service's database migrated and seeded with `seed`, built
    once (`template`) and shared by every session instead of copied: a copy of 100 MB is 100 MB
    of WAL that the streaming standby replays during the suite, for EXPLAINs that write nothing
    (default_transaction_read_only makes sure of it)."""
    name = await template(service, seed, connectable=True)
    base = ADMIN_DSN.rsplit("/", 1)[0]
    conn = await asyncpg.connect(f"{base}/{name}", server_settings={"default_transaction_read_only": "on"})
    try:
        yield conn
    finally:
        await conn.close()


async def clone_template(service: str, seed: str, name: str) -> None:
    """Create database `name` as a copy of `template(service, seed)` (a file copy: well under a
    second, where migrating and seeding 200,000 rows take seconds)."""
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await _lock(admin, service)
        source = await _template(admin, service, seed, connectable=False)
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    finally:
        await admin.close()  # also releases the advisory lock


async def template(service: str, seed: str, *, connectable: bool) -> str:
    """The name of the database migrated to head and seeded with `seed`, built if missing."""
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await _lock(admin, service)
        return await _template(admin, service, seed, connectable=connectable)
    finally:
        await admin.close()


async def _lock(admin: asyncpg.Connection, service: str) -> None:
    # Per service, one session at a time builds, prunes or copies (parallel test sessions share
    # the Postgres; a template being copied must not be dropped by a session whose digest differs).
    await admin.execute("SELECT pg_advisory_lock(hashtext($1))", f"plans-template:{service}")


async def _template(admin: asyncpg.Connection, service: str, seed: str, *, connectable: bool) -> str:
    """Its name carries a digest of the seed and one of the service's migrations and the day (seeds
    place rows around now()), so a stale template is never used, and older ones with the same seed
    are dropped. A template that is copied takes no connections (a copy needs it untouched); one
    that is shared (`connectable`) is never copied."""
    seed_digest = hashlib.sha256(seed.encode()).hexdigest()[:8]
    state = hashlib.sha256(date.today().isoformat().encode())
    for path in sorted((REPO / "services" / service / "migrations").rglob("*.py")):
        state.update(path.read_bytes())
    family = f"{service}_tpl_{seed_digest}"
    name = f"{family}_{state.hexdigest()[:8]}"
    allows = await admin.fetchval("SELECT datallowconn FROM pg_database WHERE datname = $1", name)
    if allows is None:
        await _build_template(admin, service, seed, name)
        allows = False
    if allows != connectable:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(connectable).lower()}')
    stale = await admin.fetch(
        "SELECT datname FROM pg_database WHERE datname LIKE $1 AND datname <> $2",
        family.replace("_", "\\_") + "\\_%",
        name,
    )
    for row in stale:
        await admin.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
    return name


async def _build_template(admin: asyncpg.Connection, service: str, seed: str, template: str) -> None:
    building = f"{template}_new"
    await admin.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
    base = ADMIN_DSN.rsplit("/", 1)[0]
    env = {**os.environ, "DATABASE_URL": base.replace("postgresql://", "postgresql+asyncpg://") + f"/{building}"}
    migrate = await asyncio.create_subprocess_exec(sys.executable, "-m", f"services.{service}", "migrate", env=env)
    assert await migrate.wait() == 0
    if seed:
        conn = await asyncpg.connect(f"{base}/{building}")
        try:
            await conn.execute(seed)
        finally:
            await conn.close()
    # Complete before it gets its name: a session that dies halfway leaves only a *_new database.
    await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{template}"')
    await admin.execute(f'ALTER DATABASE "{template}" ALLOW_CONNECTIONS false')


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


# What the table holds with the purge running: 100,000 keys inside SPEC §3's 24 hours and a sliver
# (1 %) past them, due for the purge. Dated so the split holds all day: the seed lives in a
# template built once a day, and rows "now() - n seconds" would drift past the window meanwhile.
IDEMPOTENCY_SEED = """
    INSERT INTO idempotency_keys (operation, caller, key, request_hash, created_at)
    SELECT 'op', 'caller ' || i % 5000, 'key ' || i, '\\x00',
           CASE WHEN i % 100 = 0 THEN now() - interval '30 days' ELSE now() + interval '1 day' END
      FROM generate_series(1, 100000) AS i
"""


def no_scan(text: str, *indexes: str) -> None:
    assert "Seq Scan" not in text, text
    for index in indexes:
        assert index in text, text


async def purge_plans(conn: asyncpg.Connection, target: Any, batch: int = 500) -> list[str]:
    """EXPLAIN of each step of a purge `Target` (services/common/purge.py), on the module's seeded
    database (its seed includes the purged tables' rows, e.g. IDEMPOTENCY_SEED)."""
    return [await plan(conn, step, **target.params, limit=batch) for step in target.steps]


# The outbox (services/common/outbox.py) with the relay and the purge running: 200,000 events,
# published within the retention (7 days) but for two slivers of 1 % each: the backlog the relay
# works on (unpublished) and the rows past the retention, due for the purge. Dated so the split
# holds all day (the template is built once a day): the live rows are at most 5 days old.
OUTBOX_SEED = """
    INSERT INTO outbox (id, type, occurred_at, data, published_at)
    SELECT gen_random_uuid(), 'thought.received', t, jsonb_build_object('thought_id', gen_random_uuid()::text),
           CASE i % 100 WHEN 0 THEN NULL WHEN 1 THEN now() - interval '30 days' ELSE t + interval '1 second' END
      FROM (SELECT i, now() - (i % 7200) * interval '1 minute' AS t FROM generate_series(1, 200000) AS i) AS s;
    ANALYZE;
"""
