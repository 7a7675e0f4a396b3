"""Each service's SQLAlchemy async engine (asyncpg) with the pool of SPEC §9, its read replicas,
and the ways in:

- `write(touching=users)`: a transaction on the primary (BEGIN … COMMIT, rolled back on error).
  `touching` names the users whose data the write changes: their reads that may lag wait for it
  (services/common/replicas.py). A set may be filled in inside the block; it is read after COMMIT.
- `read()`: a connection to the primary for reads through SQLAlchemy, in autocommit: each
  statement is its own snapshot, no BEGIN/ROLLBACK round trips around it. A read that needs
  several statements to agree with each other belongs in `write()` (or an explicit transaction).
- `driver_read()`: the same pooled connection, handed out as the asyncpg connection itself, for the
  hot read paths (inbox pages, profiles): one statement, `$n` parameters, asyncpg records. It skips
  SQLAlchemy's statement and row machinery, which measured about as costly as the query
  (bench/README: profile of `GET /v1/capsules?box=inbox`).
- `read_may_lag(query, users=...)` / `driver_read_may_lag(...)`: `query(conn)` on a read replica
  (DATABASE_REPLICA_URLS) that has replayed every recent write touching `users`, else on the
  primary; rerun on the primary if the replica fails it. For lists, summaries, profiles, search:
  data that may be stale within the lag bound for anyone but the users named.

Pre-ping (DB_POOL_PRE_PING, default on) pings a connection before use only when it sat idle in the
pool for DB_POOL_PRE_PING_IDLE_SECONDS (5 s): idle connections are the ones a restart, a failover or
a firewall may have killed; one used a moment ago is alive, and pinging it would add a round trip
to every request. A connection that dies while in steady use fails its statement: the error is
`Unavailable` (reads are retried by the mesh) and the connection is invalidated, never reused.

Connection failures surface as `Unavailable`, so a primary that is down fails fast with a clear
message instead of a 500.

Behind PgBouncer in transaction mode (DB_PGBOUNCER=1; README "PgBouncer") a client holds a server
connection only while a transaction is open, and PgBouncer before 1.21 knows nothing of prepared
statements. asyncpg prepares (Parse … Sync) and executes (Bind … Sync) in two round trips, and
between them, outside a transaction, PgBouncer may hand the server connection to someone else:
"prepared statement … does not exist", or, with asyncpg's statement cache and its per-connection
names, "already exists" on a server connection another client prepared the same name on. So, for
the primary only (replicas are reached directly): no statement cache in asyncpg nor SQLAlchemy,
statement names unique across clients, every read in a transaction (BEGIN … COMMIT pins one
server connection for prepare and execute), the idle ping in one simple-protocol round trip, and
no statement_timeout / idle_in_transaction_session_timeout at connect (PgBouncer refuses unknown
startup parameters: launcher/pgbouncer.py sets them on its server connections instead). It costs
the statement cache and two round trips per read; it is the price of the older PgBouncer.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeAlias, TypeVar

import asyncpg
import sqlalchemy.exc
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from services.common.background import Job
from services.common.errors import Unavailable
from services.common.replicas import Replica, ReplicaRouter, Watermarks, parse_lsn, replica_name
from services.common.settings import DatabaseSettings
from services.common.telemetry import DB_POOL_CHECKED_OUT, DB_POOL_WAIT, DB_READS

log = logging.getLogger(__name__)

DriverConnection: TypeAlias = asyncpg.Connection
T = TypeVar("T")
_IDLE_SINCE = "capsule_mesh_idle_since"
# What asyncpg raises when the connection itself is gone (as opposed to an error in the statement);
# its InterfaceError also covers misuse (wrong argument count), so that one counts only once the
# connection reports itself closed.
_DRIVER_DISCONNECTS = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown, cannot connect now
)


class _ReplicaFailed(Exception):
    """A read failed on a replica: run it on the primary."""


def _unique_statement_name() -> str:
    """A prepared statement name no other client of a shared (PgBouncer) server connection uses."""
    return f"__asyncpg_{uuid.uuid4()}__"


def pgbouncer_url(url: str) -> str:
    """`url` with SQLAlchemy's prepared statement cache off (DB_PGBOUNCER: see the module doc)."""
    return url + ("&" if "?" in url else "?") + "prepared_statement_cache_size=0"


def make_engine(url: str, settings: DatabaseSettings, role: str) -> AsyncEngine:
    server_settings = {"application_name": f"capsule-mesh-{role}"}
    connect_args: dict[str, Any] = {"timeout": settings.connect_timeout_seconds, "server_settings": server_settings}
    if settings.pgbouncer:
        url = pgbouncer_url(url)
        connect_args["statement_cache_size"] = 0
        connect_args["prepared_statement_name_func"] = _unique_statement_name
    else:
        server_settings["statement_timeout"] = str(settings.statement_timeout_ms)
        server_settings["idle_in_transaction_session_timeout"] = str(settings.idle_in_transaction_timeout_ms)
    engine = create_async_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_seconds,
        pool_recycle=settings.pool_recycle_seconds,
        # SQL parameters are user data (names, e-mails, letters): never in an error's text or a log.
        hide_parameters=True,
        # Pinging after idleness only: see the module doc and _ping_idle_connections.
        pool_pre_ping=settings.pool_pre_ping and settings.pool_pre_ping_idle_seconds <= 0,
        connect_args=connect_args,
    )
    if settings.pool_pre_ping and settings.pool_pre_ping_idle_seconds > 0:
        _ping_idle_connections(engine, settings.pool_pre_ping_idle_seconds, simple=settings.pgbouncer)
    DB_POOL_CHECKED_OUT.labels(role).set_function(lambda: _checked_out(engine))
    return engine


def _ping_idle_connections(engine: AsyncEngine, idle_seconds: float, *, simple: bool = False) -> None:
    """`simple`: ping with the simple query protocol (one round trip, nothing prepared: PgBouncer)."""
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def remember_idle_since(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return  # new, or used a moment ago
        try:
            # Checkout runs inside SQLAlchemy's greenlet, where awaiting the driver is allowed.
            driver = dbapi_connection.driver_connection
            await_only(driver.execute("SELECT 1") if simple else driver.fetchval("SELECT 1"))
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another one.
            raise sqlalchemy.exc.DisconnectionError(f"idle connection failed its ping: {exc}") from exc


def _checked_out(engine: AsyncEngine) -> int:
    pool = engine.sync_engine.pool
    checked_out = getattr(pool, "checkedout", None)
    return int(checked_out()) if callable(checked_out) else 0


# The callbacks of the write block the current task is in (Database.write sets it).
_AFTER_COMMIT: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar(
    "after_commit", default=None
)


def after_commit(callback: Callable[[], None]) -> None:
    """Run `callback` once the transaction of the `Database.write()` block the caller is in has
    committed; never if it rolls back. For what must not happen before the commit is visible
    (waking the outbox relay: it would find nothing yet). Outside a write block: at once."""
    callbacks = _AFTER_COMMIT.get()
    if callbacks is None:
        callback()
    else:
        callbacks.append(callback)


class Database:
    def __init__(self, settings: DatabaseSettings, watermarks: Watermarks | None = None) -> None:
        self.settings = settings
        self.primary = make_engine(settings.url, settings, "primary")
        # The same pool, in autocommit: a read is one round trip, not BEGIN + statement + ROLLBACK.
        # Behind PgBouncer reads stay in a transaction (SQLAlchemy begins one on the first
        # statement, the pool rolls it back on release): see the module doc.
        self._primary_reads = (
            self.primary if settings.pgbouncer else self.primary.execution_options(isolation_level="AUTOCOMMIT")
        )
        self.router: ReplicaRouter | None = None
        if settings.replica_urls:
            if watermarks is None:
                raise ValueError("read replicas need the watermarks (Redis) for read-your-writes")
            replicas = []
            for url in settings.replica_urls:
                name = replica_name(url)
                engine = make_engine(url, settings.for_replica(), name)
                replicas.append(Replica(name, engine, engine.execution_options(isolation_level="AUTOCOMMIT")))
            self.router = ReplicaRouter(
                replicas,
                self._primary_reads,
                watermarks,
                max_lag_seconds=settings.replica_max_lag_seconds,
                probe_interval_seconds=settings.replica_probe_seconds,
            )

    @asynccontextmanager
    async def write(self, *, touching: Collection[uuid.UUID] = ()) -> AsyncIterator[AsyncConnection]:
        """A transaction on the primary: committed when the block ends, rolled back on error.
        `touching`: the users whose data it changes (see the module doc); read after COMMIT.
        Callbacks registered with `after_commit` run once it committed, never after a rollback."""
        async with self._connect(self.primary, "primary") as conn:
            callbacks: list[Callable[[], None]] = []
            registered = _AFTER_COMMIT.set(callbacks)
            try:
                async with conn.begin():
                    yield conn
            finally:
                _AFTER_COMMIT.reset(registered)
            for callback in callbacks:  # committed (an error above skipped them)
                callback()
            if touching and self.router is not None:
                await self._remember_position(conn, touching)

    async def _remember_position(self, conn: AsyncConnection, touching: Collection[uuid.UUID]) -> None:
        """After COMMIT: the insert position is at or past the commit record. The write stands
        whatever happens here; if its position cannot be had, this instance stops vouching for
        replica reads for a while instead of failing a committed write."""
        assert self.router is not None
        try:
            position = await conn.scalar(text("SELECT pg_current_wal_insert_lsn()::text"))
        except Exception as exc:
            self.router.watermarks.lost(exc)
            return
        await self.router.watermarks.record(parse_lsn(str(position)), touching)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection to the primary for reads, in autocommit (each statement its own snapshot)."""
        async with self._connect(self._primary_reads, "primary") as conn:
            DB_READS.labels("primary").inc()
            yield conn

    @asynccontextmanager
    async def driver_read(self) -> AsyncIterator[DriverConnection]:
        """The asyncpg connection of a pooled primary read connection, for one hot-path statement."""
        async with self._connect(self._primary_reads, "primary") as conn, self._driver(conn) as driver:
            DB_READS.labels("primary").inc()
            if self.settings.pgbouncer:
                # SQLAlchemy begins nothing for the driver's own statements: one server connection
                # (behind PgBouncer) for the prepare and the execute of each.
                async with driver.transaction(readonly=True):
                    yield driver
            else:
                yield driver

    async def read_may_lag(
        self, query: Callable[[AsyncConnection], Awaitable[T]], *, users: Collection[uuid.UUID] = ()
    ) -> T:
        """`query(conn)` on a replica that has replayed the recent writes touching `users`, else
        (or when the replica fails it) on the primary."""
        return await self._may_lag(query, users, driver=False)

    async def driver_read_may_lag(
        self, query: Callable[[DriverConnection], Awaitable[T]], *, users: Collection[uuid.UUID] = ()
    ) -> T:
        """`read_may_lag` on the asyncpg connection (the hot paths' `driver_read`)."""
        return await self._may_lag(query, users, driver=True)

    async def _may_lag(self, query: Callable[[Any], Awaitable[T]], users: Collection[uuid.UUID], *, driver: bool) -> T:
        replica = await self.router.choose(users) if self.router is not None else None
        if replica is not None:
            try:
                return await self._on_replica(replica, query, driver=driver)
            except _ReplicaFailed:
                pass
        primary: AbstractAsyncContextManager[Any] = self.driver_read() if driver else self.read()
        async with primary as conn:
            return await query(conn)

    async def _on_replica(self, replica: Replica, query: Callable[[Any], Awaitable[T]], *, driver: bool) -> T:
        """Run `query` on the replica's pool within DB_REPLICA_READ_TIMEOUT_SECONDS. Whatever goes
        wrong there — unreachable, gone mid-read, too slow (a hung standby must not hold the call
        for the whole statement timeout), a conflict with recovery, a connection left in an odd
        state — raises _ReplicaFailed after the replica is set aside and the connection discarded:
        the caller runs the query on the primary, where a statement that is itself wrong fails
        again and is reported from there."""
        assert self.router is not None
        try:
            async with self._connect(replica.reads, replica.name) as conn:
                try:
                    async with asyncio.timeout(self.settings.replica_read_timeout_seconds):
                        if driver:
                            raw = await conn.get_raw_connection()
                            result = await query(raw.driver_connection)
                        else:
                            result = await query(conn)
                except BaseException:
                    if not conn.invalidated:
                        await conn.invalidate()
                    raise
        except Exception as exc:  # rerun on the primary: see the docstring
            self.router.read_failed(replica, exc)
            raise _ReplicaFailed from exc
        DB_READS.labels(replica.name).inc()
        return result

    @asynccontextmanager
    async def _driver(self, conn: AsyncConnection) -> AsyncIterator[DriverConnection]:
        raw = await conn.get_raw_connection()
        driver: DriverConnection = raw.driver_connection
        try:
            yield driver
        except _DRIVER_DISCONNECTS as exc:
            if isinstance(exc, asyncpg.InterfaceError) and not driver.is_closed():
                raise
            # SQLAlchemy did not see this error: tell the pool the connection is dead.
            await conn.invalidate(exc)
            log.warning("database connection lost", extra={"fields": {"error": str(exc)}})
            raise Unavailable("the database connection was lost; try again shortly") from exc

    @asynccontextmanager
    async def _connect(self, engine: AsyncEngine, role: str) -> AsyncIterator[AsyncConnection]:
        started = time.perf_counter()
        try:
            conn = await engine.connect()
        except sqlalchemy.exc.TimeoutError as exc:
            raise Unavailable("the database connection pool is exhausted; try again shortly") from exc
        except (sqlalchemy.exc.DBAPIError, OSError) as exc:
            # Whatever stops a connection from being opened (down, refused, "too many clients")
            # is the database being unavailable to us, never an internal error.
            log.warning("database unreachable", extra={"fields": {"role": role, "error": str(exc)}})
            raise Unavailable("the database is unavailable; try again shortly") from exc
        DB_POOL_WAIT.labels(role).observe(time.perf_counter() - started)
        try:
            yield conn
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            if exc.connection_invalidated or isinstance(exc.orig, OSError):
                raise Unavailable("the database connection was lost; try again shortly") from exc
            raise
        finally:
            await conn.close()

    def background_jobs(self) -> dict[str, Job]:
        """The replicas' health monitor, when there are replicas (run by the service's host)."""
        return {"replica-monitor": self.router.monitor} if self.router is not None else {}

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        if self.router is not None:
            for replica in self.router.replicas:
                await replica.engine.dispose()
        await self.primary.dispose()


def violated_constraint(exc: sqlalchemy.exc.IntegrityError) -> str | None:
    """The name of the unique/check constraint or index an IntegrityError is about, if known."""
    cause = getattr(exc.orig, "__cause__", None)
    name = getattr(cause, "constraint_name", None)
    return str(name) if name else None
