"""Alembic, driven from code: each service keeps its revisions in `<service>/migrations/`.

`upgrade(migrations_dir, database_url)` creates the service's database when it does not exist yet,
then migrates it to head. Each service's `migrations/env.py` only calls `run_env()`.

Tables that every service has are created by one function here, called from each service's own
revision (Alembic records applied revisions by id, not by content).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from pathlib import Path

import asyncpg
from alembic import command, context, op
from alembic.config import Config
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine


def upgrade(migrations_dir: Path, database_url: str) -> None:
    asyncio.run(create_database_if_missing(database_url))
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(config, "head")


async def create_database_if_missing(database_url: str) -> None:
    url = make_url(database_url)
    name = url.database
    if not name:
        raise SystemExit("DATABASE_URL names no database")
    admin = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database="postgres",
    )
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # Identifiers cannot be bound as parameters; quote it instead.
            quoted = '"' + name.replace('"', '""') + '"'
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # created meanwhile by another process
                await admin.execute(f"CREATE DATABASE {quoted}")
    finally:
        await admin.close()


def run_env() -> None:
    """Body of every service's migrations/env.py (online mode, async engine)."""
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is set by upgrade()"

    def do_run(connection: Connection) -> None:
        context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()

    async def run() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.connect() as connection:
            await connection.run_sync(do_run)
            await connection.commit()
        await engine.dispose()

    asyncio.run(run())


def create_idempotency_keys_table() -> None:
    """The `idempotency_keys` table of services/common/idempotency.py, as revision 0001 of every
    service creates it. Already applied where a database exists: a change to the table is a new
    revision in each service, never an edit here."""
    # Retry-safe writes (SPEC §3): one row per (operation, caller, key) for 24 h.
    op.execute(
        """
        CREATE TABLE idempotency_keys (
            operation    text NOT NULL,
            caller       text NOT NULL,
            key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
            request_hash bytea NOT NULL,
            result_id    uuid,
            created_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (operation, caller, key)
        )
        """
    )
    op.execute("CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at)")


def create_indexes_concurrently(indexes: dict[str, str]) -> None:
    """`name → "table (columns) [WHERE …]"`, each built with CREATE INDEX CONCURRENTLY: on a table
    written all the time, a plain CREATE INDEX would block the writes for as long as the build
    takes. CONCURRENTLY cannot run in a transaction, hence the autocommit block."""
    with op.get_context().autocommit_block():
        for name, target in indexes.items():
            op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {target}")


def drop_indexes_concurrently(names: Iterable[str]) -> None:
    with op.get_context().autocommit_block():
        for name in names:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
