"""Postgres and Redis for the mesh: reuse them when reachable, else install and start them.

Standard library only (raw protocol probes over sockets), so it works before and inside the venv.

Where they are comes from the environment, decided once per launcher run and handed to every
process through `Infra.env()`:
  POSTGRES_HOST (127.0.0.1), POSTGRES_PORT (5432), POSTGRES_USER (postgres), POSTGRES_PASSWORD
  REDIS_URL (redis://127.0.0.1:6379/0)
  POSTGRES_REPLICA (1; 0 = no standby), POSTGRES_REPLICA_PORT (5433), POSTGRES_REPLICA_DIR

A local primary gets one streaming hot standby on 127.0.0.1:POSTGRES_REPLICA_PORT (launcher/standby.py):
made or started at set-up (`ensure(install=True)`), only probed by `ensure(install=False)`. It has the
primary's roles and databases (a physical copy), so the same user and password reach it.

When a server is not reachable and its host is this machine, the launcher installs the Debian
packages if the binaries are missing (`apt-get install -y postgresql redis-server`) and starts
them. A Postgres the launcher installed itself gets a random password for `postgres` (Debian's
default authentication on 127.0.0.1 is scram-sha-256), kept in .run/state/postgres.json with the
port of its cluster and used in every URL to that server (never to another). A Postgres it did not
install is never reconfigured: if it asks for a password, set POSTGRES_PASSWORD.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from launcher import standby
from launcher.bootstrap import REPO, Apt, SetupError, log, run

STATE_DIR = REPO / ".run" / "state"
PG_STATE_FILE = STATE_DIR / "postgres.json"
LOG_DIR = REPO / ".run" / "logs"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Probe(Enum):
    UNREACHABLE = "unreachable"  # nothing listening / not answering
    READY = "ready"  # answered and let us in without a password
    NEEDS_PASSWORD = "needs-password"  # answered and asked for a password
    REJECTED = "rejected"  # answered with an error (pg_hba, wrong password, ...)


@dataclass(frozen=True)
class ProbeResult:
    status: Probe
    detail: str = ""


@dataclass(frozen=True)
class PostgresServer:
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str = ""

    def _netloc(self) -> str:
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{auth}@{host}:{self.port}"

    def url(self, database: str) -> str:
        """SQLAlchemy URL, as services read it from DATABASE_URL."""
        return f"postgresql+asyncpg://{self._netloc()}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """libpq/asyncpg DSN (for the launcher's own maintenance connections)."""
        return f"postgresql://{self._netloc()}/{database}"


@dataclass(frozen=True)
class Infra:
    postgres: PostgresServer
    redis_url: str
    # The streaming hot standby of `postgres` (same user and password), or None: disabled
    # (POSTGRES_REPLICA=0), a primary on another machine, or (tests) none running.
    replica: PostgresServer | None = None

    def replica_dsn(self, database: str = "postgres") -> str | None:
        """libpq/asyncpg DSN of `database` on the standby (None without one)."""
        return self.replica.dsn(database) if self.replica is not None else None

    def replica_url(self, database: str) -> str | None:
        """SQLAlchemy URL of `database` on the standby, as services read DATABASE_REPLICA_URLS."""
        return self.replica.url(database) if self.replica is not None else None

    def env(self) -> dict[str, str]:
        """Environment that makes a child launcher/pytest see the same servers."""
        env = {
            "POSTGRES_HOST": self.postgres.host,
            "POSTGRES_PORT": str(self.postgres.port),
            "POSTGRES_USER": self.postgres.user,
            "POSTGRES_PASSWORD": self.postgres.password,
            "REDIS_URL": self.redis_url,
            "POSTGRES_REPLICA": "1" if self.replica is not None else "0",
        }
        if self.replica is not None:
            env["POSTGRES_REPLICA_PORT"] = str(self.replica.port)
        return env


# --- probes (raw protocol, stdlib) ----------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed by server")
        data += chunk
    return data


def probe_postgres(host: str, port: int, user: str = "postgres", timeout: float = 1.0) -> ProbeResult:
    """Send a protocol-3 StartupMessage and read the server's first answer (no password sent)."""
    params = b"user\x00" + user.encode() + b"\x00database\x00postgres\x00application_name\x00capsule-launcher\x00\x00"
    startup = struct.pack("!ii", 8 + len(params), 196608) + params
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(startup)
            kind = _recv_exact(sock, 1)
            (length,) = struct.unpack("!i", _recv_exact(sock, 4))
            body = _recv_exact(sock, length - 4)
            with contextlib.suppress(OSError):
                sock.sendall(b"X" + struct.pack("!i", 4))  # Terminate
    except (OSError, ConnectionError) as exc:
        return ProbeResult(Probe.UNREACHABLE, str(exc))
    if kind == b"R":
        (code,) = struct.unpack("!i", body[:4])
        if code == 0:
            return ProbeResult(Probe.READY, "trust")
        method = {3: "password", 5: "md5", 10: "scram-sha-256"}.get(code, f"auth method {code}")
        return ProbeResult(Probe.NEEDS_PASSWORD, method)
    if kind == b"E":
        fields = dict((f[:1].decode(), f[1:].decode(errors="replace")) for f in body.split(b"\x00") if f)
        message = fields.get("M", "error")
        # Starting up / shutting down: it is there but not usable yet.
        if fields.get("C") in {"57P03"}:
            return ProbeResult(Probe.UNREACHABLE, message)
        return ProbeResult(Probe.REJECTED, message)
    return ProbeResult(Probe.REJECTED, f"unexpected answer {kind!r}")


def _resp_command(*args: str) -> bytes:
    out = f"*{len(args)}\r\n".encode()
    for a in args:
        raw = a.encode()
        out += b"$" + str(len(raw)).encode() + b"\r\n" + raw + b"\r\n"
    return out


def parse_redis_url(url: str) -> tuple[str, int, str, str]:
    """(host, port, username, password) of a redis:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise SetupError(f"REDIS_URL must be redis://...; got {url!r}")
    return (
        parts.hostname or "127.0.0.1",
        parts.port or 6379,
        unquote(parts.username or ""),
        unquote(parts.password or ""),
    )


def probe_redis(url: str, timeout: float = 1.0) -> ProbeResult:
    """AUTH (when the URL carries a password) then PING."""
    host, port, username, password = parse_redis_url(url)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            stream = sock.makefile("rb")
            if password:
                sock.sendall(_resp_command("AUTH", *([username] if username else []), password))
                line = stream.readline().decode(errors="replace").strip()
                if not line.startswith("+"):
                    return ProbeResult(Probe.REJECTED, line)
            sock.sendall(_resp_command("PING"))
            line = stream.readline().decode(errors="replace").strip()
    except OSError as exc:
        return ProbeResult(Probe.UNREACHABLE, str(exc))
    if line == "+PONG":
        return ProbeResult(Probe.READY)
    if line.startswith("-NOAUTH"):
        return ProbeResult(Probe.NEEDS_PASSWORD, line)
    if line.startswith("-LOADING") or not line:
        return ProbeResult(Probe.UNREACHABLE, line or "no answer")
    return ProbeResult(Probe.REJECTED, line)


def wait_until_reachable(probe: Callable[[], ProbeResult], what: str, timeout: float = 60.0) -> ProbeResult:
    deadline = time.monotonic() + timeout
    result = probe()
    while result.status is Probe.UNREACHABLE:
        if time.monotonic() > deadline:
            raise SetupError(f"{what} still unreachable after {timeout:.0f} s: {result.detail}")
        time.sleep(0.2)
        result = probe()
    return result


# --- local Postgres (Debian's postgresql-common tooling) ----------------------------------------


def _load_pg_state() -> dict[str, object]:
    try:
        data = json.loads(PG_STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_pg_state(state: Mapping[str, object]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    PG_STATE_FILE.write_text(json.dumps(dict(state), indent=2) + "\n")
    PG_STATE_FILE.chmod(0o600)


def _pg_installed() -> bool:
    return shutil.which("pg_ctlcluster") is not None and bool(_pg_versions())


def _pg_versions() -> list[str]:
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if (p / "bin" / "postgres").exists()]
    return sorted(found, key=lambda v: [int(x) if x.isdigit() else 0 for x in v.split(".")])


def _pg_clusters() -> list[tuple[str, str, int, str]]:
    """(version, name, port, status) of every local cluster, from `pg_lsclusters`."""
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False)
    clusters = []
    for line in out.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[2].isdigit():
            clusters.append((cols[0], cols[1], int(cols[2]), cols[3]))
    return clusters


def start_local_postgres(port: int) -> None:
    if not _pg_installed():
        log("Postgres is not installed: installing Debian's postgresql")
        _save_pg_state({**_load_pg_state(), "installed_by_launcher": True})
        Apt.install("postgresql")
    clusters = _pg_clusters()
    if not clusters:
        version = _pg_versions()[-1]
        run(["pg_createcluster", version, "main", "--port", str(port)])
        clusters = _pg_clusters()
    matching = [c for c in clusters if c[2] == port]
    if not matching:
        ports = ", ".join(f"{v}/{n} on {p}" for v, n, p, _ in clusters)
        raise SetupError(f"no local Postgres cluster on port {port} (found: {ports}); set POSTGRES_PORT")
    version, name, _, status = matching[0]
    if status != "online":
        log(f"starting Postgres cluster {version}/{name} on port {port}")
        run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"])


def set_local_postgres_password(user: str, port: int) -> str:
    """Give `user` a random password through the local socket (peer auth as the postgres OS user);
    saved with the port of the cluster it belongs to (see `saved_password`)."""
    password = secrets.token_urlsafe(18)
    if shutil.which("runuser") is None or shutil.which("psql") is None:
        raise SetupError("cannot set the Postgres password: runuser/psql missing")
    log(f"setting a password for Postgres role {user!r} (kept in {PG_STATE_FILE})")
    ident = '"' + user.replace('"', '""') + '"'
    sql = f"ALTER ROLE {ident} PASSWORD '{password}';\n"  # token_urlsafe: no quotes in it
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"],
        input=sql,
        text=True,
        capture_output=True,
        cwd="/",
        check=False,
    )
    if result.returncode != 0:
        raise SetupError(f"setting the Postgres password failed: {result.stderr.strip()}")
    _save_pg_state({**_load_pg_state(), "user": user, "port": port, "password": password})
    return password


def saved_password(host: str, port: int, user: str) -> str:
    """The password the launcher gave `user` on the local Postgres it installed, for that server
    only: never sent to another host or port (a test's fake server, a POSTGRES_PORT pointing at
    another cluster)."""
    state = _load_pg_state()
    password = state.get("password")
    if host in LOCAL_HOSTS and state.get("port") == port and state.get("user") == user and isinstance(password, str):
        return password
    return ""


# --- local Redis -------------------------------------------------------------------------------------


def start_local_redis(host: str, port: int) -> None:
    if shutil.which("redis-server") is None:
        log("Redis is not installed: installing Debian's redis-server")
        Apt.install("redis-server")
        # The package's own init script may already have started it.
        if probe_redis(f"redis://{host}:{port}/0").status is not Probe.UNREACHABLE:
            return
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log(f"starting redis-server on {host}:{port} (no persistence: it is a cache)")
    run(
        [
            "redis-server",
            "--daemonize", "yes",
            "--bind", host,
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(LOG_DIR / "redis.log"),
        ]
    )  # fmt: skip


# --- the decision ----------------------------------------------------------------------------------


def configured(env: Mapping[str, str] | None = None) -> Infra:
    """What the environment (and the saved password of a launcher-installed Postgres) says,
    without probing anything: cheap enough for import-time use (pytest_configure)."""
    env = os.environ if env is None else env
    user = env.get("POSTGRES_USER") or "postgres"
    host, port = env.get("POSTGRES_HOST") or "127.0.0.1", int(env.get("POSTGRES_PORT") or 5432)
    password = env.get("POSTGRES_PASSWORD") or saved_password(host, port, user)
    server = PostgresServer(host, port, user, password)
    return Infra(server, env.get("REDIS_URL") or DEFAULT_REDIS_URL)


# --- probing and starting ----------------------------------------------------------------------------------


def ensure(env: Mapping[str, str] | None = None, *, install: bool = True) -> Infra:
    """Find (and with install=True, install/start) Postgres and Redis; return how to reach them.

    install=False only detects: for pytest run directly, which must never apt-get anything.
    """
    env = os.environ if env is None else env
    pg_host = env.get("POSTGRES_HOST") or "127.0.0.1"
    pg_port = int(env.get("POSTGRES_PORT") or 5432)
    pg_user = env.get("POSTGRES_USER") or "postgres"
    redis_url = env.get("REDIS_URL") or DEFAULT_REDIS_URL
    hint = "run `make up` / `make test` (python3 -m launcher setup) to install and start it"

    def pg_probe() -> ProbeResult:
        return probe_postgres(pg_host, pg_port, pg_user)

    pg = pg_probe()
    if pg.status is Probe.UNREACHABLE:
        if not install or pg_host not in LOCAL_HOSTS:
            raise SetupError(f"Postgres at {pg_host}:{pg_port} is unreachable ({pg.detail}); {hint}")
        start_local_postgres(pg_port)
        pg = wait_until_reachable(pg_probe, f"Postgres at {pg_host}:{pg_port}")
    else:
        log(f"reusing the Postgres reachable at {pg_host}:{pg_port} ({pg.status.value})")
    if pg.status is Probe.REJECTED:
        raise SetupError(f"Postgres at {pg_host}:{pg_port} refused role {pg_user!r}: {pg.detail}")

    password = env.get("POSTGRES_PASSWORD") or saved_password(pg_host, pg_port, pg_user)
    if pg.status is Probe.NEEDS_PASSWORD and not password:
        if install and pg_host in LOCAL_HOSTS and _load_pg_state().get("installed_by_launcher"):
            password = set_local_postgres_password(pg_user, pg_port)
        else:
            raise SetupError(
                f"Postgres at {pg_host}:{pg_port} asks a password ({pg.detail}) for role {pg_user!r}: "
                "set POSTGRES_PASSWORD"
            )

    redis_host, redis_port, _, _ = parse_redis_url(redis_url)

    def redis_probe() -> ProbeResult:
        return probe_redis(redis_url)

    rd = redis_probe()
    if rd.status is Probe.UNREACHABLE:
        if not install or redis_host not in LOCAL_HOSTS:
            raise SetupError(f"Redis at {redis_host}:{redis_port} is unreachable ({rd.detail}); {hint}")
        start_local_redis(redis_host, redis_port)
        rd = wait_until_reachable(redis_probe, f"Redis at {redis_host}:{redis_port}")
    else:
        log(f"reusing the Redis reachable at {redis_host}:{redis_port} ({rd.status.value})")
    if rd.status is not Probe.READY:
        raise SetupError(f"Redis at {redis_host}:{redis_port}: {rd.detail}; put the password in REDIS_URL")

    primary = PostgresServer(pg_host, pg_port, pg_user, password)
    method = "trust" if pg.status is Probe.READY else (pg.detail or "scram-sha-256")
    return Infra(primary, redis_url, ensure_replica(primary, env, install=install, password_method=method))


def ensure_replica(
    primary: PostgresServer, env: Mapping[str, str], *, install: bool, password_method: str = "trust"
) -> PostgresServer | None:
    """The standby of a local primary: made/started/reused (install=True) or probed (install=False)."""
    if not standby.enabled(env):
        log("no standby (POSTGRES_REPLICA=0): services read from the primary")
        return None
    if primary.host not in LOCAL_HOSTS:
        log(f"no standby: the primary {primary.host} is not on this machine (POSTGRES_REPLICA=0 to silence)")
        return None
    port = standby.configured_port(env)
    conn = standby.Conn(primary.host, primary.port, primary.user, primary.password)
    if install:
        data_dir = Path(env.get("POSTGRES_REPLICA_DIR") or standby.DEFAULT_DATA_DIR)
        found = standby.ensure(conn, port=port, data_dir=data_dir, password_method=password_method)
    else:
        probed = standby.probe(conn, port)
        if probed is None:
            log(f"WARNING: no streaming standby of the primary on 127.0.0.1:{port}: services read from the primary")
            return None
        found = probed
    return PostgresServer(found.host, found.port, primary.user, primary.password)
