"""Each service's SQLAlchemy async engine (asyncpg) with the pool settings of SPEC §9.

`Database.write()` opens a transaction on the primary; `Database.read()` a read-only one that will
go to a replica once replicas are configured and healthy (today every read goes to the primary:
see `read`). Connection failures surface as `Unavailable`, so a primary that is down fails fast
with a clear message instead of a 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.common.errors import Unavailable
from services.common.settings import DatabaseSettings
from services.common.telemetry import DB_POOL_CHECKED_OUT, DB_POOL_WAIT

log = logging.getLogger(__name__)


def make_engine(url: str, settings: DatabaseSettings, role: str) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_seconds,
        pool_recycle=settings.pool_recycle_seconds,
        pool_pre_ping=settings.pool_pre_ping,
        connect_args={
            "timeout": settings.connect_timeout_seconds,
            "server_settings": {
                "application_name": f"capsule-mesh-{role}",
                "statement_timeout": str(settings.statement_timeout_ms),
            },
        },
    )
    DB_POOL_CHECKED_OUT.labels(role).set_function(lambda: _checked_out(engine))
    return engine


def _checked_out(engine: AsyncEngine) -> int:
    pool = engine.sync_engine.pool
    checked_out = getattr(pool, "checkedout", None)
    return int(checked_out()) if callable(checked_out) else 0


class Database:
    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.primary = make_engine(settings.url, settings, "primary")

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction on the primary: committed when the block ends, rolled back on error."""
        async with self._connect(self.primary, "primary") as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads. The seam for read replicas (SPEC §9): until they are wired in,
        reads use the primary, which also gives read-your-writes for free."""
        async with self._connect(self.primary, "primary") as conn:
            yield conn

    @asynccontextmanager
    async def _connect(self, engine: AsyncEngine, role: str) -> AsyncIterator[AsyncConnection]:
        started = time.perf_counter()
        try:
            conn = await engine.connect()
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, OSError) as exc:
            log.warning("database unreachable", extra={"fields": {"role": role, "error": str(exc)}})
            raise Unavailable("the database is unavailable; try again shortly") from exc
        except sqlalchemy.exc.TimeoutError as exc:
            raise Unavailable("the database connection pool is exhausted; try again shortly") from exc
        DB_POOL_WAIT.labels(role).observe(time.perf_counter() - started)
        try:
            yield conn
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            if exc.connection_invalidated or isinstance(exc.orig, OSError):
                raise Unavailable("the database connection was lost; try again shortly") from exc
            raise
        finally:
            await conn.close()

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.primary.dispose()


def violated_constraint(exc: sqlalchemy.exc.IntegrityError) -> str | None:
    """The name of the unique/check constraint or index an IntegrityError is about, if known."""
    cause = getattr(exc.orig, "__cause__", None)
    name = getattr(cause, "constraint_name", None)
    return str(name) if name else None
