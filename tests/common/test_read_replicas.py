"""Reads on a real streaming standby (services/common/replicas.py), through the gateway.

The stacks here run on a primary and a standby of their own (tests/replica.py): pausing or
stopping the shared standby would hold back every other test's reads meanwhile. One instance per
service, so each service's /metrics tells where its reads ran: `db_reads_total{target}` is the
primary or the replica (`127.0.0.1:<port>/<database>`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from launcher import standby
from launcher.infra import Infra, PostgresServer
from launcher.keys import KeyPair
from launcher.stack import Stack
from tests.capsules.helpers import at, bearer, eventually, new_user, pair, send, uid
from tests.conftest import CAPSULE_LEAD_SECONDS, start_test_stack
from tests.metrics import summed
from tests.recipients.helpers import ask
from tests.replica import conn, one, own_primary, own_standby, replayed

pytestmark = pytest.mark.slow(30)  # scheduled first: see tests/conftest.py

SERVICES = ("auth", "recipients", "capsules")


class Mirror:
    """A primary and its standby of this module's own."""

    def __init__(self, infra: Infra, replica: PostgresServer, made: standby.Standby) -> None:
        self.infra = infra
        self.replica = replica
        self.made = made

    def pause(self) -> None:
        standby.psql(conn(self.replica), "SELECT pg_wal_replay_pause()")

    def resume(self) -> None:
        standby.psql(conn(self.replica), "SELECT pg_wal_replay_resume()")

    def paused(self) -> bool:
        return one(self.replica, "SELECT pg_get_wal_replay_pause_state()") == "paused"

    def stop(self) -> None:
        assert self.made.data_dir is not None
        standby.stop(self.made.data_dir)

    def start(self) -> None:
        assert self.made.data_dir is not None
        standby.ensure(
            conn(self.infra.postgres),
            port=self.replica.port,
            data_dir=self.made.data_dir,
            log_file=self.made.data_dir.parent / f"{self.made.data_dir.name}.log",
        )


@pytest.fixture(scope="module")
def mirror(infra: Infra) -> Iterator[Mirror]:
    with own_primary(infra.postgres) as primary, own_standby(primary) as (replica, made):
        yield Mirror(Infra(primary, infra.redis_url, replica), replica, made)


def stack_on(mirror: Mirror, keys: KeyPair, max_lag_seconds: float) -> Stack:
    return start_test_stack(
        mirror.infra,
        keys,
        instances=dict.fromkeys(SERVICES, 1),
        service_env={
            "CAPSULE_MIN_UNLOCK_LEAD_SECONDS": str(CAPSULE_LEAD_SECONDS),
            "DB_REPLICA_MAX_LAG_SECONDS": f"{max_lag_seconds:g}",
            "DB_REPLICA_PROBE_SECONDS": "0.1",
        },
    )


@pytest.fixture(scope="module")
def patient(mirror: Mirror, jwt_keys: KeyPair) -> Iterator[Stack]:
    """A stack whose services tolerate a minute of lag: a paused replica stays in use."""
    stack = stack_on(mirror, jwt_keys, 60)
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
async def api(patient: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=patient.gateway_url, timeout=15) as client:
        yield client


# --- where reads ran ------------------------------------------------------------------------------


def replica_reads(stack: Stack, mirror: Mirror, service: str) -> float:
    port = mirror.replica.port
    return summed(stack, service, rf'db_reads_total\{{target="127\.0\.0\.1:{port}/[^"]*"\}} (\S+)')


def primary_reads(stack: Stack, service: str) -> float:
    return summed(stack, service, r'db_reads_total\{target="primary"\} (\S+)')


def fallbacks(stack: Stack, service: str, reason: str) -> float:
    return summed(stack, service, rf'db_replica_fallbacks_total\{{reason="{reason}"\}} (\S+)')


def replica_up(stack: Stack, service: str) -> bool:
    return summed(stack, service, r"db_replica_up\{[^}]*\} (\S+)") == 1


class Where:
    """Reads per target of each service since it was made."""

    def __init__(self, stack: Stack, mirror: Mirror) -> None:
        self.stack, self.mirror = stack, mirror
        self.replica = {s: replica_reads(stack, mirror, s) for s in SERVICES}
        self.primary = {s: primary_reads(stack, s) for s in SERVICES}
        self.not_replayed = {s: fallbacks(stack, s, "not_replayed") for s in SERVICES}

    def on_replica(self, service: str) -> float:
        return replica_reads(self.stack, self.mirror, service) - self.replica[service]

    def on_primary(self, service: str) -> float:
        return primary_reads(self.stack, service) - self.primary[service]

    def held_back(self, service: str) -> float:
        return fallbacks(self.stack, service, "not_replayed") - self.not_replayed[service]


async def replica_in_use(stack: Stack, mirror: Mirror) -> None:
    """Every service's monitor has seen the standby up and caught up with what exists now."""
    await replayed(mirror.infra)

    async def up() -> bool | None:
        return True if all(replica_up(stack, s) for s in SERVICES) else None

    await eventually(up, within=30)


async def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# --- read-your-writes on a paused standby ---------------------------------------------------------


async def test_with_replay_paused_each_writer_reads_their_write_while_others_read_the_replica(
    api: httpx.AsyncClient, patient: Stack, mirror: Mirror
) -> None:
    a, b, a_to_b = await pair(api)
    c, d = await new_user(api), await new_user(api)
    await replica_in_use(patient, mirror)

    # Before the pause, the observer D's lists run on the replica.
    where = Where(patient, mirror)
    await ok(await api.get("/v1/connections", headers=bearer(d)))
    assert where.on_replica("recipients") >= 1

    mirror.pause()
    try:
        await eventually(lambda: asyncio.to_thread(lambda: True if mirror.paused() else None))
        where = Where(patient, mirror)
        tag = uuid.uuid4().hex[:10]

        # A renames: A's next read shows it (the stale profile is not read back from the replica).
        await ok(await api.patch("/v1/me", json={"firstName": f"Zed{tag}"}, headers=bearer(a)))
        assert (await ok(await api.get("/v1/me", headers=bearer(a))))["firstName"] == f"Zed{tag}"

        # E signs up: the new account is there for E's first calls (its profile is read from the
        # database: nothing is cached for it yet).
        e = await new_user(api)
        assert (await ok(await api.get("/v1/me", headers=bearer(e))))["id"] == uid(e)
        await ok(await api.get("/v1/capsules:summary", headers=bearer(e)))

        # A asks C: both see the request at once.
        request = await ok(await ask(api, a, c))
        outgoing = await ok(await api.get("/v1/connection-requests?direction=outgoing", headers=bearer(a)))
        assert request["id"] in [r["id"] for r in outgoing["connectionRequests"]]
        incoming = await ok(await api.get("/v1/connection-requests?direction=incoming", headers=bearer(c)))
        assert request["id"] in [r["id"] for r in incoming["connectionRequests"]]

        # C accepts: both see the connection (and their new linked recipient) at once.
        await ok(await api.post(f"/v1/connection-requests/{request['id']}:accept", headers=bearer(c)))
        c_connections = await ok(await api.get("/v1/connections", headers=bearer(c)))
        assert uid(a) in [row["userId"] for row in c_connections["connections"]]
        a_connections = await ok(await api.get("/v1/connections", headers=bearer(a)))
        assert uid(c) in [row["userId"] for row in a_connections["connections"]]
        c_recipients = await ok(await api.get("/v1/recipients", headers=bearer(c)))
        assert uid(a) in [row.get("linkedUserId") for row in c_recipients["recipients"]]

        # A writes to B: A's outbox and B's inbox hold the capsule at once.
        capsule = await ok(await send(api, a, a_to_b, unlocksAt=at(3600)))
        outbox = await ok(await api.get("/v1/capsules?box=outbox&status=sealed", headers=bearer(a)))
        assert capsule["id"] in [row["id"] for row in outbox["capsules"]]
        inbox = await ok(await api.get("/v1/capsules?box=inbox&status=sealed", headers=bearer(b)))
        assert capsule["id"] in [row["id"] for row in inbox["capsules"]]
        summary = await ok(await api.get("/v1/capsules:summary", headers=bearer(b)))
        assert int(summary["sealed"]) >= 1

        # Those reads went to the primary because the replica had not replayed their writes...
        for service in SERVICES:
            assert where.held_back(service) >= 1, service
        # ...while D, who wrote nothing, is served by the replica, which is behind: D's search
        # does not find A's new name yet.
        before = Where(patient, mirror)
        await ok(await api.get("/v1/connections", headers=bearer(d)))
        await ok(await api.get("/v1/capsules?box=inbox&status=sealed", headers=bearer(d)))
        found = await ok(await api.get("/v1/users:search", params={"query": f"zed{tag}"}, headers=bearer(d)))
        assert found.get("users", []) == []
        assert before.on_replica("recipients") >= 1
        assert before.on_replica("capsules") >= 1
        assert before.on_replica("auth") >= 1
        assert before.held_back("recipients") == before.held_back("capsules") == 0
    finally:
        mirror.resume()

    # Replay resumed: D finds A, and A's own reads return to the replica once it caught up.
    async def d_finds_a() -> bool | None:
        hits = await ok(await api.get("/v1/users:search", params={"query": f"zed{tag}"[:12]}, headers=bearer(d)))
        return True if uid(a) in [h["id"] for h in hits.get("users", [])] else None

    await eventually(d_finds_a, within=30, every=0.5)

    async def a_reads_the_replica() -> bool | None:
        since = Where(patient, mirror)
        await ok(await api.get("/v1/connections", headers=bearer(a)))
        return True if since.on_replica("recipients") >= 1 else None

    await eventually(a_reads_the_replica, within=30)


# --- a standby that stops, or lags beyond the bound, under a steady read load ---------------------


class SteadyReads:
    """Users reading lists through the gateway in a loop (lists that reach the database on every
    call: connections, a filtered inbox, recipients), counting every answer that is not a 200."""

    def __init__(self, api: httpx.AsyncClient, readers: list[dict[str, Any]]) -> None:
        self.api, self.readers = api, readers
        self.answers = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _loop(self, reader: dict[str, Any]) -> None:
        paths = ("/v1/connections", "/v1/capsules?box=inbox&status=sealed", "/v1/recipients")
        turn = 0
        while not self._stop.is_set():
            response = await self.api.get(paths[turn % len(paths)], headers=bearer(reader))
            turn += 1
            self.answers += 1
            if response.status_code != 200:
                self.failures.append(f"{response.status_code} {response.text[:200]}")

    def __enter__(self) -> SteadyReads:
        self._tasks = [asyncio.create_task(self._loop(r)) for r in self.readers]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


async def moved(check: Any, within: float = 30) -> None:
    await eventually(lambda: asyncio.to_thread(lambda: True if check() else None), within=within, every=0.2)


async def test_stopping_the_standby_under_load_fails_no_call_and_reads_come_back(
    api: httpx.AsyncClient, patient: Stack, mirror: Mirror
) -> None:
    readers = [(await pair(api))[1] for _ in range(3)]
    await replica_in_use(patient, mirror)
    load = SteadyReads(api, readers)
    with load:
        where = Where(patient, mirror)
        await moved(lambda: where.on_replica("recipients") >= 5 and where.on_replica("capsules") >= 5)

        await asyncio.to_thread(mirror.stop)
        stopped = Where(patient, mirror)
        answered = load.answers
        await moved(lambda: stopped.on_primary("recipients") >= 5 and stopped.on_primary("capsules") >= 5)
        assert stopped.on_replica("recipients") == stopped.on_replica("capsules") == 0
        assert not replica_up(patient, "recipients")
        assert load.answers > answered

        await asyncio.to_thread(mirror.start)
        back = Where(patient, mirror)
        await moved(lambda: back.on_replica("recipients") >= 5 and back.on_replica("capsules") >= 5)
        await load.stop()
    assert load.failures == [], load.failures[:5]
    assert load.answers > 30


async def test_a_standby_lagging_beyond_the_bound_is_skipped_until_it_catches_up(
    mirror: Mirror, jwt_keys: KeyPair
) -> None:
    stack = await asyncio.to_thread(stack_on, mirror, jwt_keys, 1.0)
    try:
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=15) as api:
            readers = [(await pair(api))[1] for _ in range(2)]
            writer = await new_user(api)
            await replica_in_use(stack, mirror)
            load = SteadyReads(api, readers)
            with load:
                where = Where(stack, mirror)
                await moved(lambda: where.on_replica("recipients") >= 5)
                mirror.pause()
                try:
                    # The primary moves on (someone writes); the paused replica falls behind.
                    for n in range(15):
                        await ok(await api.patch("/v1/me", json={"firstName": f"W{n}"}, headers=bearer(writer)))
                        await asyncio.sleep(0.1)
                    lagging = Where(stack, mirror)
                    await moved(lambda: not replica_up(stack, "recipients") and not replica_up(stack, "capsules"))
                    await moved(lambda: lagging.on_primary("recipients") >= 5)
                    behind = Where(stack, mirror)
                    await moved(lambda: behind.on_primary("recipients") >= 5)
                    assert behind.on_replica("recipients") == 0
                    lag = summed(stack, "recipients", r"db_replica_lag_seconds\{[^}]*\} (\S+)")
                    assert lag > 1.0 or lag == -1
                finally:
                    mirror.resume()
                caught_up = Where(stack, mirror)
                await moved(lambda: caught_up.on_replica("recipients") >= 5)
                await load.stop()
            assert load.failures == [], load.failures[:5]
    finally:
        await asyncio.to_thread(stack.close)
