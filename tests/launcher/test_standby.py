"""The streaming hot standby set-up makes (launcher/standby.py), against the real one on
127.0.0.1:POSTGRES_REPLICA_PORT: it is in recovery, rows committed on the primary appear once
replayed, replay can be paused and resumed, the stacks hand it to the services, set-up reuses it,
and a damaged standby of the launcher's is rebuilt — that one as the standby of a small primary of
the test's own (initdb): a base backup of the machine's cluster, test databases and query-plan
templates included, costs seconds each, one of a fresh cluster a fraction of one."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from launcher import infra as infra_mod
from launcher import standby
from launcher.bootstrap import REPO
from launcher.infra import Infra, PostgresServer
from launcher.keys import KeyPair
from launcher.process import free_port
from launcher.stack import Stack, StackSettings
from tests.replica import conn, one, own_primary

pytestmark = pytest.mark.slow(6)  # scheduled first: see tests/conftest.py


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def replica(infra: Infra) -> PostgresServer:
    if infra.replica is None:
        if not standby.enabled(os.environ):
            pytest.skip("POSTGRES_REPLICA=0: no standby")
        pytest.fail("no streaming standby of the primary: run the tests with `make test` (set-up makes it)")
    return infra.replica


@pytest.fixture
def scratch(infra: Infra, replica: PostgresServer) -> Iterator[str]:
    """A database of its own on the primary (so on the standby), with a table `t(v text)`."""
    name = f"standby_t{uuid.uuid4().hex[:10]}"
    standby.psql(conn(infra.postgres), f"CREATE DATABASE {name}")
    try:
        standby.psql(conn(infra.postgres), "CREATE TABLE t (v text)", database=name)
        # On the standby too before the test reads it there (or pauses its replay).
        created = one(infra.postgres, "SELECT pg_current_wal_lsn()")
        wait_for(lambda: replayed(replica, created), f"standby replays the scratch database ({created})")
        yield name
    finally:
        standby.psql(conn(infra.postgres), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def commit_row(infra: Infra, database: str, value: str) -> str:
    """Insert (committed when psql returns) and the primary's WAL position after the commit."""
    standby.psql(conn(infra.postgres), f"INSERT INTO t VALUES ('{value}')", database=database)
    return one(infra.postgres, "SELECT pg_current_wal_lsn()")


def replayed(replica: PostgresServer, lsn: str) -> bool:
    return one(replica, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t"


def visible(replica: PostgresServer, database: str, value: str) -> bool:
    return one(replica, f"SELECT count(*) FROM t WHERE v = '{value}'", database=database) == "1"


def test_the_standby_is_a_streaming_hot_standby_of_the_primary(infra: Infra, replica: PostgresServer) -> None:
    assert (replica.host, replica.port) == ("127.0.0.1", standby.configured_port(os.environ))
    assert one(replica, "SELECT pg_is_in_recovery()") == "t"
    status, sender_port = standby.psql(conn(replica), "SELECT status, sender_port FROM pg_stat_wal_receiver")[0]
    assert (status, int(sender_port)) == ("streaming", infra.postgres.port)
    system_id = "SELECT system_identifier FROM pg_control_system()"
    assert one(replica, system_id) == one(infra.postgres, system_id)
    # Its slot on the primary is in use: the primary keeps the WAL it has not received yet.
    slot = standby.slot_name(replica.port)
    assert one(infra.postgres, f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'") == "t"
    assert infra.replica_dsn("auth") == replica.dsn("auth")
    assert Infra(infra.postgres, infra.redis_url).replica_dsn("auth") is None


def test_a_committed_row_is_on_the_standby_once_its_lsn_is_replayed(
    infra: Infra, replica: PostgresServer, scratch: str
) -> None:
    lsn = commit_row(infra, scratch, "first")
    wait_for(lambda: replayed(replica, lsn), f"standby replays {lsn}")
    assert visible(replica, scratch, "first")


def test_paused_replay_holds_new_rows_back_until_resumed(infra: Infra, replica: PostgresServer, scratch: str) -> None:
    # Every reader of the standby sees the pause: keep it short, and always resume.
    standby.psql(conn(replica), "SELECT pg_wal_replay_pause()")
    try:
        wait_for(lambda: one(replica, "SELECT pg_get_wal_replay_pause_state()") == "paused", "replay paused")
        lsn = commit_row(infra, scratch, "held")
        # Received (streaming goes on) but not replayed: the row is not there yet.
        wait_for(lambda: one(replica, f"SELECT pg_last_wal_receive_lsn() >= '{lsn}'::pg_lsn") == "t", "WAL received")
        assert not replayed(replica, lsn)
        assert not visible(replica, scratch, "held")
    finally:
        standby.psql(conn(replica), "SELECT pg_wal_replay_resume()")
    wait_for(lambda: replayed(replica, lsn), f"standby replays {lsn} once resumed")
    assert visible(replica, scratch, "held")


def test_each_service_instance_gets_its_database_on_the_standby(
    infra: Infra, replica: PostgresServer, jwt_keys: KeyPair, tmp_path: Path
) -> None:
    stack = Stack(StackSettings.for_tests(infra, jwt_keys, work_dir=tmp_path))
    for name, insts in stack.instances.items():
        for inst in insts:
            env = stack.service_env(inst)
            assert env["DATABASE_REPLICA_URLS"] == replica.url(stack.database_name(name))
            assert env["DATABASE_REPLICA_URLS"].split("@")[1].startswith(f"127.0.0.1:{replica.port}/")
            assert env["DATABASE_URL"] == infra.postgres.url(stack.database_name(name))
    off = Stack(StackSettings.for_tests(infra, jwt_keys, work_dir=tmp_path, read_replica=False))
    assert {off.service_env(i)["DATABASE_REPLICA_URLS"] for insts in off.instances.values() for i in insts} == {""}


def test_set_up_reuses_the_running_standby(infra: Infra, replica: PostgresServer) -> None:
    started = one(replica, "SELECT pg_postmaster_start_time()")
    env = {**os.environ, **infra.env()}
    for _ in range(2):
        again = infra_mod.ensure_replica(infra.postgres, env, install=True)
        assert again == replica
        assert one(replica, "SELECT pg_postmaster_start_time()") == started
    assert infra_mod.ensure_replica(infra.postgres, {**env, "POSTGRES_REPLICA": "0"}, install=True) is None


@pytest.fixture
def small_primary(infra: Infra) -> Iterator[PostgresServer]:
    with own_primary(infra.postgres) as primary:
        yield primary


def test_a_stopped_standby_is_started_and_a_damaged_one_rebuilt(small_primary: PostgresServer) -> None:
    """On a port and data directory of its own (the shared standby is not touched)."""
    infra = Infra(postgres=small_primary, redis_url="", replica=None)
    primary = conn(infra.postgres)
    port = free_port()
    asked = REPO / ".run" / "test-standbys" / uuid.uuid4().hex[:10]
    # Elsewhere when the `postgres` user cannot reach the checkout (standby.locations).
    data_dir, log_file = standby.locations(port, asked, asked.parent / f"{asked.name}.log")
    server = PostgresServer("127.0.0.1", port, infra.postgres.user, infra.postgres.password)
    try:
        made = standby.ensure(primary, port=port, data_dir=data_dir, log_file=log_file)
        assert made.data_dir == data_dir
        assert one(server, "SELECT pg_is_in_recovery()") == "t"
        marker = data_dir / "launcher-test-marker"
        marker.write_text("kept unless rebuilt")

        standby.stop(data_dir)
        restarted = standby.ensure(primary, port=port, data_dir=data_dir, log_file=log_file)
        assert restarted.started_at != made.started_at and marker.exists()  # started, not rebuilt

        # Promoted: no longer a standby (as if standby.signal were gone). Set-up rebuilds it.
        one(server, "SELECT pg_promote()")
        wait_for(lambda: one(server, "SELECT pg_is_in_recovery()") == "f", "promoted")
        rebuilt = standby.ensure(primary, port=port, data_dir=data_dir, log_file=log_file)
        assert not marker.exists()
        assert rebuilt.started_at != restarted.started_at
        assert one(server, "SELECT pg_is_in_recovery()") == "t"
        assert standby.inspect(
            standby.Conn("127.0.0.1", port, primary.user, primary.password),
            one(infra.postgres, "SELECT system_identifier FROM pg_control_system()"),
            infra.postgres.port,
        ).ok
    finally:
        standby.remove(primary, port, data_dir)
        log_file.unlink(missing_ok=True)
        if data_dir.parent.is_dir() and not any(data_dir.parent.iterdir()):
            shutil.rmtree(data_dir.parent)
    assert (
        one(infra.postgres, f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{standby.slot_name(port)}'")
        == "0"
    )
