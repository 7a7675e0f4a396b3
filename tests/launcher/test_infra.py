"""Postgres/Redis detection: reuse what is reachable, never install when told not to, and
read the servers' answers right (probed with raw protocol messages)."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from launcher import bootstrap
from launcher import infra as lib
from launcher.infra import Infra, PostgresServer, Probe, SetupError
from launcher.process import free_port


@contextmanager
def fake_server(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-connection-at-a-time TCP server on a free port that runs `answer` per client."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join()
        listener.close()


def pg_answer(kind: bytes, payload: bytes) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        (length,) = struct.unpack("!i", conn.recv(4))
        conn.recv(length - 4)  # the StartupMessage
        conn.sendall(kind + struct.pack("!i", 4 + len(payload)) + payload)

    return answer


def redis_answer(line: bytes) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.sendall(line)

    return answer


# --- the machine's real servers (reused, never touched) -----------------------------------------------


def test_the_configured_postgres_is_detected(infra: Infra) -> None:
    pg = infra.postgres
    result = lib.probe_postgres(pg.host, pg.port, pg.user)
    assert result.status in (Probe.READY, Probe.NEEDS_PASSWORD), result


def test_the_configured_redis_is_detected(infra: Infra) -> None:
    assert lib.probe_redis(infra.redis_url).status is Probe.READY


def test_reachable_servers_are_reused_without_installing_or_starting(
    infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not install or start anything when the servers are reachable")

    monkeypatch.setattr(bootstrap.Apt, "install", forbidden)
    monkeypatch.setattr(lib, "start_local_postgres", forbidden)
    monkeypatch.setattr(lib, "start_local_redis", forbidden)
    found = lib.ensure(infra.env(), install=True)
    assert found.postgres.host == infra.postgres.host and found.postgres.port == infra.postgres.port
    assert found.redis_url == infra.redis_url


# --- unreachable: fail clearly, install only when allowed and local ------------------------------------


def test_unreachable_servers_fail_clearly_when_installing_is_not_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootstrap.Apt, "install", lambda *a: pytest.fail("installed"))
    env = {"POSTGRES_PORT": str(free_port()), "REDIS_URL": "redis://127.0.0.1:6379/0"}
    with pytest.raises(SetupError, match=r"unreachable.*make up"):
        lib.ensure(env, install=False)


def test_a_remote_unreachable_server_is_never_installed_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lib, "start_local_postgres", lambda *a: pytest.fail("started"))
    # 127.0.0.2 is a loopback address but not "this machine's Postgres" for the launcher.
    env = {"POSTGRES_HOST": "127.0.0.2", "POSTGRES_PORT": str(free_port())}
    with pytest.raises(SetupError, match=r"127\.0\.0\.2"):
        lib.ensure(env, install=True)


def test_unreachable_local_servers_are_started(infra: Infra, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The install/start path is taken for a local unreachable server (stubbed here: this
    machine's servers must not be touched), then the launcher waits until it answers."""
    # No password saved by an earlier install of this machine's own Postgres (a fresh machine
    # has one): the stubbed server was not set up by the launcher.
    monkeypatch.setattr(lib, "PG_STATE_FILE", tmp_path / "postgres.json")
    calls: list[str] = []
    pg_port = free_port()

    def start_pg(port: int) -> None:
        calls.append(f"postgres:{port}")
        monkeypatch.setattr(lib, "probe_postgres", lambda *a, **k: lib.ProbeResult(Probe.READY, "trust"))

    monkeypatch.setattr(lib, "start_local_postgres", start_pg)
    # A stand-in primary has no standby to make (launcher/standby.py is tested in test_standby.py).
    found = lib.ensure({"POSTGRES_PORT": str(pg_port), "REDIS_URL": infra.redis_url, "POSTGRES_REPLICA": "0"})
    assert calls == [f"postgres:{pg_port}"]
    assert found.postgres.port == pg_port and found.postgres.password == ""


# --- reading the answers -------------------------------------------------------------------------------


def test_postgres_probe_reads_each_kind_of_answer() -> None:
    assert lib.probe_postgres("127.0.0.1", free_port()).status is Probe.UNREACHABLE
    with fake_server(pg_answer(b"R", struct.pack("!i", 0))) as port:
        assert lib.probe_postgres("127.0.0.1", port).status is Probe.READY
    with fake_server(pg_answer(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256\x00\x00")) as port:
        assert lib.probe_postgres("127.0.0.1", port) == lib.ProbeResult(Probe.NEEDS_PASSWORD, "scram-sha-256")
    error = b"SFATAL\x00C28000\x00Mno pg_hba.conf entry for host\x00\x00"
    with fake_server(pg_answer(b"E", error)) as port:
        assert lib.probe_postgres("127.0.0.1", port) == lib.ProbeResult(Probe.REJECTED, "no pg_hba.conf entry for host")
    starting = b"SFATAL\x00C57P03\x00Mthe database system is starting up\x00\x00"
    with fake_server(pg_answer(b"E", starting)) as port:
        assert lib.probe_postgres("127.0.0.1", port).status is Probe.UNREACHABLE


def test_redis_probe_reads_each_kind_of_answer() -> None:
    assert lib.probe_redis(f"redis://127.0.0.1:{free_port()}/0").status is Probe.UNREACHABLE
    with fake_server(redis_answer(b"+PONG\r\n")) as port:
        assert lib.probe_redis(f"redis://127.0.0.1:{port}/0").status is Probe.READY
    with fake_server(redis_answer(b"-NOAUTH Authentication required.\r\n")) as port:
        assert lib.probe_redis(f"redis://127.0.0.1:{port}/0").status is Probe.NEEDS_PASSWORD
    with fake_server(redis_answer(b"-LOADING Redis is loading the dataset\r\n")) as port:
        assert lib.probe_redis(f"redis://127.0.0.1:{port}/0").status is Probe.UNREACHABLE


def test_a_password_protected_postgres_needs_a_password_unless_the_launcher_installed_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, infra: Infra
) -> None:
    monkeypatch.setattr(lib, "PG_STATE_FILE", tmp_path / "pg.json")
    with fake_server(pg_answer(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256\x00\x00")) as port:
        env = {"POSTGRES_PORT": str(port), "REDIS_URL": infra.redis_url, "POSTGRES_REPLICA": "0"}
        with pytest.raises(SetupError, match="POSTGRES_PASSWORD"):
            lib.ensure(env)
        found = lib.ensure({**env, "POSTGRES_PASSWORD": "s3cr/et"})
    assert found.postgres.password == "s3cr/et"
    assert found.postgres.url("auth") == f"postgresql+asyncpg://postgres:s3cr%2Fet@127.0.0.1:{port}/auth"


def test_urls() -> None:
    server = PostgresServer("127.0.0.1", 5432, "postgres", "")
    assert server.url("auth_t1") == "postgresql+asyncpg://postgres@127.0.0.1:5432/auth_t1"
    assert server.dsn() == "postgresql://postgres@127.0.0.1:5432/postgres"
    assert lib.parse_redis_url("redis://:pw@10.0.0.1:6380/2") == ("10.0.0.1", 6380, "", "pw")
    env = Infra(server, "redis://127.0.0.1:6379/0").env()
    assert env["POSTGRES_PORT"] == "5432" and env["REDIS_URL"] == "redis://127.0.0.1:6379/0"


def test_a_postgres_the_launcher_installed_gets_a_password_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, infra: Infra
) -> None:
    state = tmp_path / "pg.json"
    monkeypatch.setattr(lib, "PG_STATE_FILE", state)
    monkeypatch.setattr(lib, "STATE_DIR", tmp_path)
    # The launcher's state file (README: .run/state/postgres.json) as its install of Postgres leaves it.
    state.write_text(json.dumps({"installed_by_launcher": True}))
    set_calls: list[str] = []

    def set_password(user: str, port: int) -> str:  # stands in for `runuser -u postgres -- psql`, and keeps it
        set_calls.append(user)
        state.write_text(
            json.dumps({**json.loads(state.read_text()), "user": user, "port": port, "password": "generated"})
        )
        return "generated"

    monkeypatch.setattr(lib, "set_local_postgres_password", set_password)
    with fake_server(pg_answer(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256\x00\x00")) as port:
        env = {"POSTGRES_PORT": str(port), "REDIS_URL": infra.redis_url, "POSTGRES_REPLICA": "0"}
        assert lib.ensure(env).postgres.password == "generated"
        assert lib.ensure(env).postgres.password == "generated"  # kept, not reset
        assert lib.configured(env).postgres.password == "generated"
    assert set_calls == ["postgres"]


def test_a_saved_password_goes_only_to_the_server_it_was_set_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = tmp_path / "pg.json"
    monkeypatch.setattr(lib, "PG_STATE_FILE", state)
    state.write_text(json.dumps({"installed_by_launcher": True, "user": "postgres", "port": 5432, "password": "kept"}))
    assert lib.configured({"POSTGRES_PORT": "5432"}).postgres.password == "kept"
    assert lib.configured({"POSTGRES_PORT": "5433"}).postgres.password == ""  # another cluster
    assert lib.configured({"POSTGRES_HOST": "10.0.0.9"}).postgres.password == ""  # another host
    assert lib.configured({"POSTGRES_USER": "app"}).postgres.password == ""  # another role
    # A state file from before ports were saved names no server: its password goes nowhere.
    state.write_text(json.dumps({"installed_by_launcher": True, "user": "postgres", "password": "old"}))
    assert lib.configured({}).postgres.password == ""


def test_an_unreachable_local_redis_is_really_started(infra: Infra, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real start path: `redis-server --daemonize yes ...` on a free port (this machine has the
    binary, so nothing is installed), then reachable; shut down again at the end."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not installed here (the launcher would apt-get it)")
    monkeypatch.setattr(bootstrap.Apt, "install", lambda *a: pytest.fail("installed"))
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        found = lib.ensure({**infra.env(), "REDIS_URL": url})
        assert found.redis_url == url
        assert lib.probe_redis(url).status is Probe.READY
    finally:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
            sock.recv(100)
    assert lib.probe_redis(url).status is Probe.UNREACHABLE
