"""The services' database paths through a real PgBouncer (Debian's, transaction mode) in front of
the real primary: a stack with `pgbouncer=True` serves the main calls of every service (sessions,
profiles, search, connections, recipients, capsules from sent to opened, an idempotent retry), and
every connection the primary has to the services' databases is one of PgBouncer's server
connections. Below the stack: what DB_PGBOUNCER changes in services/common/db.py, and what fails
without it (PgBouncer refuses asyncpg's startup parameters; asyncpg's statement cache collides)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from launcher import pgbouncer as pgb
from launcher.infra import Infra
from launcher.keys import KeyPair
from launcher.process import ManagedProcess, free_port
from launcher.stack import Stack
from services.common.db import Database, pgbouncer_url
from services.common.errors import Unavailable
from services.common.settings import DatabaseSettings
from tests.auth.test_auth_http import PASSWORD
from tests.capsules.helpers import at, bearer, eventually, new_user, pair, send, uid
from tests.conftest import CAPSULE_LEAD_SECONDS, start_test_stack

pytestmark = pytest.mark.slow(12)

SERVICES = ("auth", "recipients", "capsules")


@pytest.fixture(scope="module")
def binary() -> str:
    found = pgb.find()
    if found is None:
        pytest.fail("no pgbouncer binary: `apt-get install -y pgbouncer` (Debian's package)", pytrace=False)
    return found


@pytest.fixture(scope="module")
def bounced(infra: Infra, jwt_keys: KeyPair, binary: str) -> Iterator[Stack]:
    # No read replica: every read goes to the primary, hence through PgBouncer.
    stack = start_test_stack(
        infra,
        jwt_keys,
        pgbouncer=True,
        read_replica=False,
        service_env={"CAPSULE_MIN_UNLOCK_LEAD_SECONDS": str(CAPSULE_LEAD_SECONDS)},
    )
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
async def api(bounced: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=bounced.gateway_url, timeout=30.0) as client:
        yield client


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, f"{response.request.method} {response.request.url}: {response.text}"
    return dict(response.json())


def transactions(stack: Stack) -> dict[str, int]:
    """PgBouncer's SHOW STATS: transactions it pooled per service database."""
    rows = pgb.admin_query(stack.pgbouncer_config, "SHOW STATS")
    names = {stack.database_name(s): s for s in SERVICES}
    return {names[str(r["database"])]: int(str(r["total_xact_count"])) for r in rows if r["database"] in names}


async def test_every_main_path_works_through_pgbouncer(bounced: Stack, api: httpx.AsyncClient) -> None:
    assert bounced.pgbouncer is not None and bounced.pgbouncer.running
    for inst in (i for insts in bounced.instances.values() for i in insts):
        assert inst.process.env["DB_PGBOUNCER"] == "1"
        assert f":{bounced.settings.pgbouncer_port}/" in inst.process.env["DATABASE_URL"]
    before = transactions(bounced)

    # auth: sign up, log in, GetMe, update the profile, search.
    tag = uuid.uuid4().hex[:8]
    a, b, to_b = await pair(api)
    c = await new_user(api, firstName=f"Zed{tag}")
    logged_in = ok(await api.post("/v1/auth:login", json={"username": a["user"]["username"], "password": PASSWORD}))
    assert ok(await api.get("/v1/me", headers=bearer(logged_in)))["id"] == uid(a)
    ok(await api.patch("/v1/me", json={"firstName": f"Ada{tag}"}, headers=bearer(a)))
    assert ok(await api.get("/v1/me", headers=bearer(a)))["firstName"] == f"Ada{tag}"
    found = ok(await api.get("/v1/users:search", params={"query": c["user"]["username"]}, headers=bearer(a)))
    assert [u["id"] for u in found["users"]] == [uid(c)]

    # recipients: a connection request accepted (pair did one; one more here), connections, CRUD.
    request = ok(await api.post("/v1/connection-requests", json={"toUserId": uid(c)}, headers=bearer(a)))
    ok(await api.post(f"/v1/connection-requests/{request['id']}:accept", headers=bearer(c)))
    connections = ok(await api.get("/v1/connections", headers=bearer(a)))
    assert len(connections["connections"]) == 2
    rose = ok(await api.post("/v1/recipients", json={"name": "Rose", "email": f"{tag}@example.com"}, headers=bearer(a)))
    ok(await api.patch(f"/v1/recipients/{rose['id']}", json={"name": "Nana"}, headers=bearer(a)))
    assert ok(await api.get(f"/v1/recipients/{rose['id']}", headers=bearer(a)))["name"] == "Nana"
    listed = ok(await api.get("/v1/recipients", params={"pageSize": 100}, headers=bearer(a)))
    assert rose["id"] in {r["id"] for r in listed["recipients"]} and len(listed["recipients"]) == 3
    ok(await api.delete(f"/v1/recipients/{rose['id']}", headers=bearer(a)))
    assert (await api.get(f"/v1/recipients/{rose['id']}", headers=bearer(a))).status_code == 404

    # capsules: created (once, whatever the retries), inbox and outbox, filtered, summary, opened.
    key = f"pgb-{tag}"
    first = ok(await send(api, a, to_b, key=key, title="soon", unlocksAt=at(CAPSULE_LEAD_SECONDS + 1)))
    retries = await asyncio.gather(
        *(send(api, a, to_b, key=key, title="soon", unlocksAt=first["unlocksAt"]) for _ in range(5))
    )
    assert {ok(r)["id"] for r in retries} == {first["id"]}
    later = ok(await send(api, a, to_b, title="later", unlocksAt=at(3600)))
    inbox = ok(await api.get("/v1/capsules", params={"box": "inbox"}, headers=bearer(b)))
    assert {r["id"] for r in inbox["capsules"]} == {first["id"], later["id"]}
    outbox = ok(await api.get("/v1/capsules", params={"box": "outbox"}, headers=bearer(a)))
    assert {r["id"] for r in outbox["capsules"]} == {first["id"], later["id"]}
    sealed = ok(await api.get("/v1/capsules", params={"box": "inbox", "status": "sealed"}, headers=bearer(b)))
    assert first["id"] in {r["id"] for r in sealed["capsules"]}

    async def opened() -> dict[str, Any] | None:
        response = await api.post(f"/v1/capsules/{first['id']}:open", headers=bearer(b), json={})
        return dict(response.json()) if response.status_code == 200 else None

    assert (await eventually(opened))["status"] == "CAPSULE_STATUS_OPENED"
    counts = ok(await api.get("/v1/capsules:summary", headers=bearer(b)))
    assert counts["opened"] == "1" and counts["sealed"] == "1"
    filtered = ok(await api.get("/v1/capsules", params={"box": "inbox", "status": "opened"}, headers=bearer(b)))
    assert [r["id"] for r in filtered["capsules"]] == [first["id"]]

    # The traffic went through PgBouncer: its transactions grew for every service database...
    after = transactions(bounced)
    assert all(after[s] > before.get(s, 0) for s in SERVICES), (before, after)
    # ... and every connection the primary has to those databases is one of PgBouncer's.
    await assert_only_pgbouncer_connects(bounced)


async def assert_only_pgbouncer_connects(stack: Stack) -> None:
    def server_ports() -> set[int]:
        rows = pgb.admin_query(stack.pgbouncer_config, "SHOW SERVERS")
        return {int(str(r["local_port"])) for r in rows}

    ports = server_ports()
    names = [stack.database_name(s) for s in SERVICES]
    conn = await asyncpg.connect(stack.settings.infra.postgres.dsn("postgres"))
    try:
        rows = await conn.fetch(
            "SELECT datname, client_port FROM pg_stat_activity"
            " WHERE datname = ANY($1::text[]) AND pid <> pg_backend_pid()",
            names,
        )
    finally:
        await conn.close()
    ports |= server_ports()
    assert rows, "no connection to the services' databases at all"
    assert {r["datname"] for r in rows} == set(names)
    direct = [dict(r) for r in rows if r["client_port"] not in ports]
    assert not direct, f"connections not from PgBouncer: {direct}"
    # The connection budget: at most the pool size per database, whatever the instances' pools.
    per_db = {n: sum(1 for r in rows if r["datname"] == n) for n in names}
    assert max(per_db.values()) <= stack.settings.pgbouncer_pool_size, per_db


# --- services/common/db.py against a PgBouncer of the test's own ------------------------------------


@pytest.fixture(scope="module")
def bouncer(infra: Infra, binary: str) -> Iterator[pgb.PgBouncerConfig]:
    """A PgBouncer with a small pool (4 server connections): many clients share each one. Its
    directory is not under pytest's (mode 0700 for root: PgBouncer runs as postgres there)."""
    run_dir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    config = pgb.PgBouncerConfig("127.0.0.1", free_port(), infra.postgres, run_dir, default_pool_size=4)
    proc: ManagedProcess = pgb.process(binary, config, log_path=run_dir / "stderr.log", env={})
    proc.start().wait_ready(30)
    try:
        yield config
    finally:
        proc.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def settings_through(config: pgb.PgBouncerConfig, **overrides: Any) -> DatabaseSettings:
    return replace(DatabaseSettings(url=config.url("postgres"), pool_size=10, max_overflow=0), **overrides)


async def test_database_paths_with_db_pgbouncer_share_few_server_connections(bouncer: pgb.PgBouncerConfig) -> None:
    db = Database(settings_through(bouncer, pgbouncer=True, pool_pre_ping_idle_seconds=0.001))

    async def paths(i: int) -> None:
        async with db.read() as conn:
            assert await conn.scalar(text("SELECT CAST(:i AS int)"), {"i": i}) == i
            assert await conn.scalar(text("SELECT CAST(:i AS int) + 1"), {"i": i}) == i + 1
        async with db.driver_read() as driver:
            assert await driver.fetchval("SELECT $1::int", i) == i
        assert await db.driver_read_may_lag(lambda d: d.fetchval("SELECT $1::int * 2", i)) == 2 * i
        async with db.write() as conn:
            assert await conn.scalar(text("SELECT CAST(:i AS int)"), {"i": i}) == i
        # The statement timeout reaches the server connections (PgBouncer's connect_query).
        async with db.driver_read() as driver:
            assert await driver.fetchval("SHOW statement_timeout") == "10s"

    try:
        for _ in range(3):
            await asyncio.gather(*(paths(i) for i in range(60)))
        await db.ping()
    finally:
        await db.close()


async def test_without_db_pgbouncer_the_connection_is_refused(bouncer: pgb.PgBouncerConfig) -> None:
    """asyncpg's startup parameters (statement_timeout, ...) are refused by PgBouncer 1.18."""
    db = Database(settings_through(bouncer))
    try:
        with pytest.raises(Unavailable):
            async with db.driver_read() as driver:
                await driver.fetchval("SELECT 1")
    finally:
        await db.close()


async def test_asyncpg_statement_cache_collides_behind_pgbouncer(bouncer: pgb.PgBouncerConfig) -> None:
    """asyncpg's statement cache (names `__asyncpg_stmt_N__` per client connection), 20 clients over
    4 server connections: they prepare the same names on the same server connections."""
    with pytest.raises(asyncpg.PostgresError, match="prepared statement"):
        await raw_asyncpg_reads(bouncer, statement_cache_size=100)


async def test_asyncpg_without_its_cache_survives_autocommit_behind_pgbouncer(bouncer: pgb.PgBouncerConfig) -> None:
    """asyncpg's own fetch with no cache outside a transaction works: it ends Parse/Describe with
    Flush, not Sync, so PgBouncer keeps the server connection until the Bind/Execute's Sync."""
    await raw_asyncpg_reads(bouncer, statement_cache_size=0)


async def test_sqlalchemy_autocommit_loses_its_statements_behind_pgbouncer(bouncer: pgb.PgBouncerConfig) -> None:
    """SQLAlchemy's asyncpg adapter prepares (a round trip of its own) and then executes: in
    autocommit PgBouncer hands the server connection to someone else in between, even with the
    caches off and unique names. Hence DB_PGBOUNCER's reads in a transaction."""
    engine = create_async_engine(
        pgbouncer_url(bouncer.url("postgres")),
        pool_size=20,
        connect_args={"statement_cache_size": 0, "prepared_statement_name_func": lambda: f"__x_{uuid.uuid4()}__"},
    ).execution_options(isolation_level="AUTOCOMMIT")

    async def reads(i: int) -> None:
        async with engine.connect() as conn:
            for j in range(5):
                await conn.scalar(text(f"SELECT CAST(:i AS int) + {j}"), {"i": i})

    failures: list[BaseException] = []
    try:
        for _ in range(5):
            # Every client finishes (no connection left checked out when the engine is disposed).
            results = await asyncio.gather(*(reads(i) for i in range(40)), return_exceptions=True)
            failures += [r for r in results if isinstance(r, BaseException)]
    finally:
        await engine.dispose()
    assert failures, "every autocommit statement went through"
    assert all(isinstance(f, sqlalchemy.exc.DBAPIError) and "prepared statement" in str(f) for f in failures), failures


async def raw_asyncpg_reads(bouncer: pgb.PgBouncerConfig, **connect_args: Any) -> None:
    dsn = bouncer.url("postgres").replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(dsn, min_size=20, max_size=20, **connect_args)
    try:

        async def queries(i: int) -> None:
            async with pool.acquire() as conn:
                for j in range(5):
                    assert await conn.fetchval(f"SELECT $1::int + {j}", i) == i + j

        for _ in range(5):
            await asyncio.gather(*(queries(i) for i in range(40)))
    finally:
        await pool.close()
