"""One streaming hot standby of the local Postgres, so every read path runs against a real replica.

Like Postgres itself it is made once and reused across runs: `ensure()` (set-up) finds the standby
listening on 127.0.0.1:POSTGRES_REPLICA_PORT (5433) and keeps it when it is in recovery, is a copy
of this primary (same system identifier) and streams from it; a stopped one whose data directory is
still a standby of this primary is started again; anything else the launcher made (a removed
standby.signal, a copy of another cluster, a server that never streams) is rebuilt from scratch:

    pg_basebackup -R -X stream -C -S capsule_mesh_replica_<port> --checkpoint=fast
        → .run/postgres-replica/ (POSTGRES_REPLICA_DIR), owned by the `postgres` OS user
    pg_ctl start (hot_standby, hot_standby_feedback; log .run/logs/postgres-replica.log)

-R writes standby.signal and primary_conninfo (with the password the launcher uses, if any);
the physical replication slot keeps on the primary the WAL the standby has not received yet, so
a standby that was stopped for a while catches up instead of needing a new base backup. A server
on the port that the launcher did not start and that is not a standby of this primary is never
touched: set-up stops with a message (another POSTGRES_REPLICA_PORT, or POSTGRES_REPLICA=0).

The primary must accept the replication connection: when it answers "no pg_hba.conf entry for
replication connection", one line per loopback address is appended to its pg_hba.conf with the
authentication its ordinary connections use (trust, or the password method they ask for), and the
configuration is reloaded. Nothing else of the primary is changed; a wal_level below `replica`
stops set-up with a message (changing it needs a restart of the primary).

Only for a primary on this machine (POSTGRES_HOST 127.0.0.1/localhost/::1); POSTGRES_REPLICA=0
disables the standby (services then get no replica URL). A `fcntl` lock per port serialises
`make up` and `make test` started side by side (and worktrees sharing the port).

Standard library only, like launcher/infra.py: SQL goes through `psql` (Debian's client, installed
with the server).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from launcher.bootstrap import REPO, SetupError, is_root, log

DEFAULT_PORT = 5433
DEFAULT_DATA_DIR = REPO / ".run" / "postgres-replica"
LOG_FILE = REPO / ".run" / "logs" / "postgres-replica.log"
# Where the data and log go when the `postgres` user cannot reach the checkout (a clone in /root,
# mode 0700, on a fresh machine): under Debian's home of that user, one per port.
FALLBACK_DIR = Path("/var/lib/postgresql/capsule-mesh")
SERVER_USER = "postgres"  # the OS user Debian's server runs as (when the launcher runs as root)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
HBA_MARK = "# capsule-mesh launcher: streaming standby (launcher/standby.py)"
# The standby must allow at least as much as the primary for these, or it refuses to start.
MATCHED_SETTINGS = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)


def enabled(env: Mapping[str, str]) -> bool:
    return (env.get("POSTGRES_REPLICA") or "1").strip().lower() not in ("0", "false", "no", "off")


def configured_port(env: Mapping[str, str]) -> int:
    raw = env.get("POSTGRES_REPLICA_PORT") or str(DEFAULT_PORT)
    try:
        return int(raw)
    except ValueError:
        raise SetupError(f"POSTGRES_REPLICA_PORT={raw!r} is not an integer") from None


def slot_name(port: int) -> str:
    return f"capsule_mesh_replica_{port}"


@dataclass(frozen=True)
class Conn:
    """Where a server is and how the launcher logs in to it (the replica shares the primary's roles)."""

    host: str
    port: int
    user: str
    password: str = ""


@dataclass(frozen=True)
class Standby:
    host: str
    port: int
    started_at: str  # pg_postmaster_start_time(): the same value means the same postmaster
    data_dir: Path | None  # None: a standby of this primary that another checkout started


class SqlError(RuntimeError):
    pass


# --- psql ----------------------------------------------------------------------------------------


def psql(conn: Conn, sql: str, *, database: str = "postgres", timeout: float = 15.0) -> list[list[str]]:
    """Rows of `sql` (fields as text) through psql, or SqlError with the server's message."""
    out = _run_psql(conn, sql, ["-A", "-t", "-F", "\x1f"], database=database, timeout=timeout)
    return [line.split("\x1f") for line in out.splitlines() if line]


def psql_records(conn: Conn, sql: str, *, database: str = "postgres", timeout: float = 15.0) -> list[dict[str, str]]:
    """Rows of `sql` as dicts by column name (psql's CSV output; NULL is ""). Simple queries
    only, so it also speaks to PgBouncer's admin console (database `pgbouncer`)."""
    out = _run_psql(conn, sql, ["--csv"], database=database, timeout=timeout)
    return list(csv.DictReader(io.StringIO(out)))


def _run_psql(conn: Conn, sql: str, output: list[str], *, database: str, timeout: float) -> str:
    env = dict(os.environ, PGCONNECT_TIMEOUT="3", PGAPPNAME="capsule-launcher")
    env.pop("PGPASSWORD", None)
    if conn.password:
        env["PGPASSWORD"] = conn.password
    argv = [_psql_binary(), "-X", "-q", *output, "-v", "ON_ERROR_STOP=1"]
    argv += ["-h", conn.host, "-p", str(conn.port), "-U", conn.user, "-d", database, "-c", sql]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False, cwd="/")
    except subprocess.TimeoutExpired:
        raise SqlError(f"psql timed out after {timeout:.0f} s on {conn.host}:{conn.port}") from None
    if out.returncode != 0:
        raise SqlError(out.stderr.strip() or f"psql exit code {out.returncode}")
    return out.stdout


def _psql_binary() -> str:
    found = shutil.which("psql") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))), None)
    if found is None:
        raise SetupError("psql is missing (Debian: postgresql-client)")
    return str(found)


def _bin_dir(major: int) -> Path:
    path = Path("/usr/lib/postgresql") / str(major) / "bin"
    if not (path / "pg_basebackup").exists() or not (path / "postgres").exists():
        raise SetupError(
            f"no PostgreSQL {major} server binaries in {path} (Debian: postgresql-{major}) to run the "
            "standby with; install them or set POSTGRES_REPLICA=0"
        )
    return path


def _as_server_user(argv: list[str]) -> list[str]:
    """Postgres refuses to run as root: as root the server's commands run as `postgres`."""
    return ["runuser", "-u", SERVER_USER, "--", *argv] if is_root() else argv


def _chown_to_server_user(path: Path) -> None:
    if is_root():
        subprocess.run(["chown", "-R", f"{SERVER_USER}:{SERVER_USER}", str(path)], check=True)


def locations(port: int, data_dir: Path = DEFAULT_DATA_DIR, log_file: Path = LOG_FILE) -> tuple[Path, Path]:
    """The standby's data directory and log file: the ones asked for when the server's user can
    reach them, else FALLBACK_DIR/replica-<port>[.log]."""
    if server_user_reaches(data_dir.parent, log_file.parent):
        return data_dir, log_file
    fallback = fallback_dir()
    return fallback / f"replica-{port}", fallback / f"replica-{port}.log"


def server_user_reaches(*directories: Path) -> bool:
    """Whether the `postgres` user can reach these directories (made if missing); always true when
    the launcher does not run as root (the servers then run as the launcher's own user)."""
    if not is_root():
        return True
    check = ["runuser", "-u", SERVER_USER, "--", "test"]
    for index, directory in enumerate(directories):
        directory.mkdir(parents=True, exist_ok=True)
        # access(2) as that user resolves the whole path: one ancestor it cannot search fails it.
        check += [*(["-a"] if index else []), "-x", str(directory)]
    return subprocess.run(check, check=False, cwd="/").returncode == 0


def fallback_dir() -> Path:
    """Where files of servers run as the `postgres` user go when it cannot reach the checkout."""
    FALLBACK_DIR.mkdir(parents=True, exist_ok=True)
    _chown_to_server_user(FALLBACK_DIR)
    return FALLBACK_DIR


# --- what a server on the replica port is --------------------------------------------------------


@dataclass(frozen=True)
class Inspection:
    ok: bool
    reason: str
    started_at: str = ""


def inspect(replica: Conn, primary_sysid: str, primary_port: int) -> Inspection:
    """Is the server at `replica` a streaming hot standby of the primary (system id, port)?"""
    try:
        rows = psql(
            replica,
            "SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system()),"
            " pg_postmaster_start_time(),"
            " coalesce((SELECT status || ':' || coalesce(sender_port::text, '') FROM pg_stat_wal_receiver), '')",
            timeout=5.0,
        )
    except SqlError as exc:
        return Inspection(False, f"does not answer queries ({exc})")
    in_recovery, sysid, started_at, receiver = rows[0]
    if in_recovery != "t":
        return Inspection(False, "is not in recovery (not a standby)", started_at)
    if sysid != primary_sysid:
        return Inspection(False, f"is a copy of another cluster (system id {sysid}, primary's {primary_sysid})")
    status, _, sender_port = receiver.partition(":")
    if status != "streaming":
        return Inspection(False, f"is not streaming (WAL receiver: {status or 'none'})", started_at)
    if sender_port and int(sender_port) != primary_port:
        return Inspection(False, f"streams from port {sender_port}, not {primary_port}", started_at)
    return Inspection(True, "streaming", started_at)


def wait_streaming(replica: Conn, primary_sysid: str, primary_port: int, timeout: float = 30.0) -> Inspection:
    """Poll `inspect` until the standby streams, or the deadline (the last answer then)."""
    deadline = time.monotonic() + timeout
    while True:
        result = inspect(replica, primary_sysid, primary_port)
        if result.ok or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def probe(primary: Conn, port: int, host: str = "127.0.0.1") -> Standby | None:
    """A streaming standby of `primary` on host:port right now, or None (never starts anything)."""
    try:
        sysid = psql(primary, "SELECT system_identifier FROM pg_control_system()", timeout=5.0)[0][0]
    except SqlError:
        return None
    found = inspect(Conn(host, port, primary.user, primary.password), sysid, primary.port)
    return Standby(host, port, found.started_at, None) if found.ok else None


# --- the data directory the launcher owns -------------------------------------------------------------


def _running_pid(data_dir: Path) -> int | None:
    """The postmaster's pid from postmaster.pid when that process is alive."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # A stale file after a reboot may name a pid some other process has now.
    return pid if b"postgres" in command else None


def _pg_ctl(bin_dir: Path, data_dir: Path, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    argv = _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir), *args])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd="/")


def stop(data_dir: Path) -> None:
    """Stop the standby running from `data_dir` (fast: its sessions are ended), if it runs."""
    if _running_pid(data_dir) is None:
        return
    log(f"stopping the standby in {data_dir}")
    bin_dir = _bin_dir(int((data_dir / "PG_VERSION").read_text().strip()))
    _pg_ctl(bin_dir, data_dir, "stop", "-m", "fast", "-w", "-t", "60")


def _start(data_dir: Path, bin_dir: Path, log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.touch()
    _chown_to_server_user(log_file)
    log(f"starting the standby in {data_dir} (log {log_file})")
    result = _pg_ctl(bin_dir, data_dir, "start", "-w", "-t", "60", "-l", str(log_file))
    if result.returncode != 0:
        raise SqlError(f"pg_ctl start failed: {(result.stderr or result.stdout).strip()} (see {log_file})")


def _config(port: int, host: str, primary_settings: Mapping[str, str]) -> str:
    """postgresql.conf of the standby. Debian keeps the primary's configuration in /etc, so the base
    backup has none: the standby gets its own, with what a hot standby needs."""
    lines = [
        "# Written by the capsule-mesh launcher (launcher/standby.py): a streaming hot standby.",
        f"port = {port}",
        f"listen_addresses = '{host}'",
        # Only TCP: no socket file to collide with another server's in a shared directory.
        "unix_socket_directories = ''",
        "hot_standby = on",
        # The primary keeps the rows the standby's reads still see: reads are not cancelled by
        # vacuum replaying (the slot holds them back while the standby is down).
        "hot_standby_feedback = on",
        "wal_receiver_status_interval = 1s",
        "shared_buffers = 64MB",
        "logging_collector = off",
        "log_line_prefix = '%m [%p] '",
    ]
    lines += [f"{name} = {value}" for name, value in primary_settings.items()]
    return "\n".join(lines) + "\n"


def _hba(primary_hba: str | None, password_method: str) -> str:
    """The standby's pg_hba.conf: the primary's rules when readable (same roles, same access),
    else loopback only with the primary's method."""
    if primary_hba is not None:
        return primary_hba
    return (
        "# Written by the capsule-mesh launcher (launcher/standby.py)\n"
        f"host all all 127.0.0.1/32 {password_method}\n"
        f"host all all ::1/128 {password_method}\n"
    )


# --- the primary's side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Primary:
    conn: Conn
    sysid: str
    major: int
    settings: dict[str, str]
    hba_file: str
    ident_file: str


def _primary(conn: Conn) -> Primary:
    names = ", ".join(
        f"'{n}'" for n in (*MATCHED_SETTINGS, "wal_level", "hba_file", "ident_file", "server_version_num")
    )
    try:
        rows = psql(conn, f"SELECT name, setting FROM pg_settings WHERE name IN ({names})")
        sysid = psql(conn, "SELECT system_identifier FROM pg_control_system()")[0][0]
        in_recovery = psql(conn, "SELECT pg_is_in_recovery()")[0][0]
    except SqlError as exc:
        raise SetupError(f"cannot read the primary's settings for the standby: {exc}") from None
    settings = {name: value for name, value in rows}
    if in_recovery == "t":
        raise SetupError(f"the Postgres at {conn.host}:{conn.port} is itself a standby: set POSTGRES_REPLICA=0")
    if settings.get("wal_level") not in ("replica", "logical"):
        raise SetupError(
            f"the primary's wal_level is {settings.get('wal_level')!r}: a standby needs 'replica' "
            "(set it and restart Postgres), or set POSTGRES_REPLICA=0"
        )
    return Primary(
        conn,
        sysid,
        int(settings["server_version_num"]) // 10000,
        {n: settings[n] for n in MATCHED_SETTINGS if n in settings},
        settings.get("hba_file", ""),
        settings.get("ident_file", ""),
    )


def _replication_refusal(conn: Conn) -> str | None:
    """None when the primary accepts a replication connection from us, else its message."""
    env = dict(os.environ, PGCONNECT_TIMEOUT="3")
    env.pop("PGPASSWORD", None)
    if conn.password:
        env["PGPASSWORD"] = conn.password
    dsn = f"host={conn.host} port={conn.port} user={conn.user} dbname=replication replication=true"
    result = subprocess.run(
        [_psql_binary(), "-X", "-A", "-t", "-d", dsn, "-c", "IDENTIFY_SYSTEM"],
        capture_output=True,
        text=True,
        env=env,
        timeout=15,
        check=False,
        cwd="/",
    )
    return None if result.returncode == 0 else (result.stderr.strip() or "refused")


def allow_replication(primary: Primary, method: str) -> None:
    """Make the primary accept our replication connection: a pg_hba.conf line per loopback address
    when (and only when) there is no matching entry, then a reload."""
    refusal = _replication_refusal(primary.conn)
    if refusal is None:
        return
    if "no pg_hba.conf entry" not in refusal:
        raise SetupError(f"the primary refuses the standby's replication connection: {refusal}")
    hba = Path(primary.hba_file)
    try:
        text = hba.read_text()
        user = primary.conn.user
        addition = (
            f"\n{HBA_MARK}\nhost replication {user} 127.0.0.1/32 {method}\nhost replication {user} ::1/128 {method}\n"
        )
        hba.write_text(text.rstrip("\n") + "\n" + addition)
    except OSError as exc:
        raise SetupError(
            f"cannot add the replication line to {hba} ({exc}); add it yourself or set POSTGRES_REPLICA=0"
        ) from None
    log(f"added to {hba}: host replication {primary.conn.user} 127.0.0.1/32 and ::1/128 {method}; reloading Postgres")
    psql(primary.conn, "SELECT pg_reload_conf()")
    deadline = time.monotonic() + 15.0
    while (refusal := _replication_refusal(primary.conn)) is not None:
        if time.monotonic() > deadline:
            raise SetupError(f"the primary still refuses the replication connection after reload: {refusal}")
        time.sleep(0.2)


def _drop_slot(primary: Primary, slot: str) -> None:
    """Drop the slot of a standby that is being rebuilt (it waits for the old walsender to end)."""
    deadline = time.monotonic() + 15.0
    while True:
        rows = psql(primary.conn, f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'")
        if not rows:
            return
        if rows[0][0] != "t":
            psql(primary.conn, f"SELECT pg_drop_replication_slot('{slot}')")
            return
        if time.monotonic() > deadline:
            raise SetupError(f"replication slot {slot} is still in use on the primary; stop the standby using it")
        time.sleep(0.2)


# --- ensure ------------------------------------------------------------------------------------------


def _lock_path(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"capsule-mesh-postgres-replica-{port}.lock"


@contextlib.contextmanager
def _lock(port: int, timeout: float = 600.0) -> Iterator[None]:
    """One launcher at a time makes the standby on `port` (machine-wide: checkouts share ports)."""
    path = _lock_path(port)
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SetupError(f"another launcher holds {path} for more than {timeout:.0f} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(
    primary_conn: Conn,
    *,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    data_dir: Path = DEFAULT_DATA_DIR,
    log_file: Path = LOG_FILE,
    password_method: str = "trust",
) -> Standby:
    """A streaming hot standby of the primary on host:port: reused, started, or (re)built.

    `password_method`: how the primary's ordinary loopback connections authenticate (trust, or
    the method they ask for), used for any pg_hba line the replication connection needs."""
    if primary_conn.host not in LOCAL_HOSTS:
        raise SetupError(f"the standby is made only of a Postgres on this machine, not {primary_conn.host}")
    with _lock(port):
        data_dir, log_file = locations(port, data_dir, log_file)
        primary = _primary(primary_conn)
        replica = Conn(host, port, primary_conn.user, primary_conn.password)
        found = inspect(replica, primary.sysid, primary_conn.port)
        if not found.ok and found.reason.startswith("is not streaming"):
            # Just started, or reconnecting after the primary restarted: give it a moment.
            found = wait_streaming(replica, primary.sysid, primary_conn.port, timeout=10.0)
        ours = _running_pid(data_dir) is not None
        if found.ok:
            log(f"reusing the standby on {host}:{port} (streaming from port {primary_conn.port})")
            _warn_if_paused(replica)
            return Standby(host, port, found.started_at, data_dir if ours else None)
        bin_dir = _bin_dir(primary.major)
        if not ours and _port_answers(host, port):
            raise SetupError(
                f"{host}:{port} is taken by a server that is not a standby of {primary_conn.host}:{primary_conn.port} "
                f"({found.reason}) and that the launcher did not start from {data_dir}: stop it, or set "
                "POSTGRES_REPLICA_PORT to a free port, or POSTGRES_REPLICA=0"
            )
        if not ours and (data_dir / "standby.signal").exists() and (data_dir / "PG_VERSION").exists():
            # A standby stopped (a reboot): start it; the slot kept the WAL it needs.
            with contextlib.suppress(SqlError):
                _start(data_dir, bin_dir, log_file)
                found = wait_streaming(replica, primary.sysid, primary_conn.port)
                if found.ok:
                    return Standby(host, port, found.started_at, data_dir)
            log(f"the standby in {data_dir} {found.reason}: rebuilding it")
        elif ours:
            log(f"the standby in {data_dir} {found.reason}: rebuilding it")
        return _rebuild(primary, replica, data_dir, bin_dir, log_file, password_method)


def _warn_if_paused(replica: Conn) -> None:
    """Replay left paused (a test interrupted between pause and resume) keeps the standby behind
    for good: said, not undone (a test running side by side may be pausing it on purpose)."""
    with contextlib.suppress(SqlError, IndexError):
        state = psql(replica, "SELECT pg_get_wal_replay_pause_state()", timeout=5.0)[0][0]
        if state != "not paused":
            log(
                f"WARNING: WAL replay on the standby {replica.host}:{replica.port} is {state}; if no test is running: "
                f"psql -h {replica.host} -p {replica.port} -U {replica.user} -c 'select pg_wal_replay_resume()'"
            )


def _port_answers(host: str, port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False


def _rebuild(
    primary: Primary, replica: Conn, data_dir: Path, bin_dir: Path, log_file: Path, password_method: str
) -> Standby:
    stop(data_dir)
    if data_dir.exists():
        shutil.rmtree(data_dir)
    allow_replication(primary, password_method)
    slot = slot_name(replica.port)
    _drop_slot(primary, slot)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(mode=0o700)
    _chown_to_server_user(data_dir)
    conn = primary.conn
    env = dict(os.environ, PGAPPNAME=slot)
    env.pop("PGPASSWORD", None)
    if conn.password:
        env["PGPASSWORD"] = conn.password
    argv = [
        str(bin_dir / "pg_basebackup"),
        "-h", conn.host, "-p", str(conn.port), "-U", conn.user,
        "-D", str(data_dir),
        "-R",  # standby.signal + primary_conninfo
        "-X", "stream",
        "-C", "-S", slot,  # a slot of its own, made with the backup
        "--checkpoint=fast",
        "--no-password",  # never prompt: the password, if any, comes from PGPASSWORD
    ]  # fmt: skip
    log(f"making the standby: pg_basebackup of {conn.host}:{conn.port} into {data_dir} (slot {slot})")
    started = time.monotonic()
    # As the server's user: every file it writes is the standby's own.
    result = subprocess.run(_as_server_user(argv), capture_output=True, text=True, env=env, check=False, cwd="/")
    if result.returncode != 0:
        raise SetupError(f"pg_basebackup failed: {result.stderr.strip()}")
    log(f"base backup done in {time.monotonic() - started:.1f} s")
    auto_conf = data_dir / "postgresql.auto.conf"
    if conn.password and "password=" not in auto_conf.read_text():
        # -R copies the connection's options; should a libpq leave the password out, add it.
        quoted = conn.password.replace("'", "''")
        with auto_conf.open("a") as handle:
            handle.write(
                f"primary_conninfo = 'host={conn.host} port={conn.port} user={conn.user} "
                f"password={quoted} application_name={slot}'\n"
            )
    files = {"postgresql.conf": _config(replica.port, replica.host, primary.settings)}
    primary_hba = _read(primary.hba_file)
    files["pg_hba.conf"] = _hba(primary_hba, password_method)
    ident = _read(primary.ident_file)
    files["pg_ident.conf"] = ident if ident is not None else ""
    for name, text in files.items():
        (data_dir / name).write_text(text)
    _chown_to_server_user(data_dir)
    try:
        _start(data_dir, bin_dir, log_file)
    except SqlError as exc:
        raise SetupError(str(exc)) from None
    found = wait_streaming(replica, primary.sysid, conn.port)
    if not found.ok:
        raise SetupError(f"the new standby on {replica.host}:{replica.port} {found.reason}; see {log_file}")
    log(f"standby on {replica.host}:{replica.port} streaming from port {conn.port}")
    return Standby(replica.host, replica.port, found.started_at, data_dir)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text() if path else None
    except OSError:
        return None


def remove(primary_conn: Conn, port: int, data_dir: Path) -> None:
    """Stop the standby in `data_dir`, delete it and drop its slot on the primary (its WAL is
    then no longer kept). For a standby made on another port (tests) or one no longer wanted."""
    primary = _primary(primary_conn)
    stop(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)
    _drop_slot(primary, slot_name(port))
    _lock_path(port).unlink(missing_ok=True)
