"""PgBouncer in transaction mode in front of the primary, for the local stack (`pgbouncer=True`,
`PGBOUNCER=1 make up`) and its tests.

Debian's package (bookworm: 1.18) runs as one process per stack, from a configuration written here
into its own directory: every database name (`*`) goes to the primary, clients log in as the
primary's user (no password when the local Postgres trusts 127.0.0.1, else the same password,
checked with md5 and kept in a userlist readable by PgBouncer only), no Unix socket, a log file.

Standard library only, like launcher/infra.py: readiness and the tests' look at the admin console
(`SHOW VERSION`, `SHOW STATS`) go through `admin_query`, which runs psql as the launcher's other
SQL does (launcher/standby.py): psql's `-c` sends a simple query, the only protocol the admin
console speaks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from launcher import standby
from launcher.infra import PostgresServer
from launcher.process import ManagedProcess

# PgBouncer refuses to run as root; `-u` makes it drop to this user (Debian's pgbouncer package
# depends on postgresql-common, which creates it).
RUN_AS_WHEN_ROOT = "postgres"
# Protocol-level prepared statements in transaction mode (max_prepared_statements) exist from 1.21.
PREPARED_STATEMENTS_SINCE = (1, 21)


@dataclass(frozen=True)
class PgBouncerConfig:
    listen_host: str
    port: int
    server: PostgresServer
    run_dir: Path
    # Client connections PgBouncer accepts (every service instance's whole pool fits, with room).
    max_client_conn: int = 1000
    # Server connections per (database, user) pair: what the primary's max_connections budgets.
    default_pool_size: int = 20
    # Set on every server connection (connect_query): PgBouncer refuses them as startup parameters,
    # which is how services set them without it (services/common/db.py).
    statement_timeout_ms: int = 10_000
    idle_in_transaction_timeout_ms: int = 30_000

    @property
    def ini_path(self) -> Path:
        return self.run_dir / "pgbouncer.ini"

    @property
    def userlist_path(self) -> Path:
        return self.run_dir / "userlist.txt"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "pgbouncer.log"

    def url(self, database: str) -> str:
        """SQLAlchemy URL of `database` through PgBouncer (the primary's user and password)."""
        return PostgresServer(self.listen_host, self.port, self.server.user, self.server.password).url(database)

    def ini(self) -> str:
        server = self.server
        connect_query = (
            f"SET statement_timeout = {int(self.statement_timeout_ms)}; "
            f"SET idle_in_transaction_session_timeout = {int(self.idle_in_transaction_timeout_ms)}"
        )
        lines = [
            "[databases]",
            # Any database name: the same name on the primary (the stacks' names carry a suffix).
            f"* = host={server.host} port={server.port} connect_query='{connect_query}'",
            "",
            "[pgbouncer]",
            f"listen_addr = {self.listen_host}",
            f"listen_port = {self.port}",
            # TCP only: no socket file in /var/run/postgresql to collide with another PgBouncer's.
            "unix_socket_dir =",
            "pidfile =",
            f"logfile = {self.log_path}",
            # A server connection is held for a transaction, then goes back to the pool.
            "pool_mode = transaction",
            f"max_client_conn = {int(self.max_client_conn)}",
            f"default_pool_size = {int(self.default_pool_size)}",
            # Trusting 127.0.0.1 like the local Postgres does, else the primary's password (md5: the
            # userlist holds it in plain text, which PgBouncer also needs to log in to the server).
            f"auth_type = {'md5' if server.password else 'trust'}",
            f"auth_file = {self.userlist_path}",
            # The admin console (database `pgbouncer`): SHOW POOLS / STATS for operators and tests.
            f"admin_users = {server.user}",
            f"stats_users = {server.user}",
            # Connections and disconnections of every client are the log's bulk; errors remain.
            "log_connections = 0",
            "log_disconnections = 0",
        ]
        return "\n".join(lines) + "\n"

    def userlist(self) -> str:
        def quoted(value: str) -> str:
            return '"' + value.replace('"', '""') + '"'

        return f"{quoted(self.server.user)} {quoted(self.server.password)}\n"


def run_dir(work_dir: Path, port: int) -> Path:
    """Where its configuration, user list and log go: `<work_dir>/pgbouncer-<port>`, unless it
    runs as the `postgres` user (the launcher is root) and that user cannot reach the checkout (a
    clone in /root, mode 0700): then under /var/lib/postgresql/capsule-mesh/, like the standby."""
    wanted = work_dir / f"pgbouncer-{port}"
    if standby.server_user_reaches(work_dir):
        return wanted
    return standby.fallback_dir() / f"pgbouncer-{port}"


def find() -> str | None:
    """The pgbouncer binary (Debian's is /usr/sbin/pgbouncer, often not on a user's PATH)."""
    found = shutil.which("pgbouncer")
    if found is None and Path("/usr/sbin/pgbouncer").exists():
        found = "/usr/sbin/pgbouncer"
    return found


def version(binary: str) -> tuple[int, int, int]:
    """`pgbouncer --version`'s first line, "PgBouncer 1.18.0", as (1, 18, 0)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True, timeout=10).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise RuntimeError(f"cannot read the version of {binary}: {out!r}")
    return int(match[1]), int(match[2]), int(match[3])


def write_config(config: PgBouncerConfig) -> None:
    """pgbouncer.ini and userlist.txt (mode 0600) in run_dir; as root, owned by RUN_AS_WHEN_ROOT."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    config.ini_path.write_text(config.ini())
    fd = os.open(config.userlist_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(config.userlist())
    if os.geteuid() == 0:
        for path in (config.run_dir, config.ini_path, config.userlist_path):
            shutil.chown(path, RUN_AS_WHEN_ROOT)
        if config.log_path.exists():
            shutil.chown(config.log_path, RUN_AS_WHEN_ROOT)


def process(binary: str, config: PgBouncerConfig, *, log_path: Path, env: Mapping[str, str]) -> ManagedProcess:
    """PgBouncer in the foreground (its stderr to `log_path`), ready once `SHOW VERSION` answers."""
    write_config(config)
    argv = [binary]
    if os.geteuid() == 0:
        argv += ["-u", RUN_AS_WHEN_ROOT]
    argv.append(str(config.ini_path))

    def ready() -> bool:
        try:
            admin_query(config, "SHOW VERSION", timeout=1.0)
        except (OSError, AdminError):
            return False
        return True

    return ManagedProcess("pgbouncer", argv, env=env, log_path=log_path, ready=ready)


# --- the admin console ----------------------------------------------------------------------------


AdminError = standby.SqlError


def admin_query(
    config: PgBouncerConfig, sql: str, *, database: str = "pgbouncer", timeout: float = 5.0
) -> list[dict[str, str]]:
    """The rows of one simple query on PgBouncer (by default its admin console), as dicts, through
    psql (launcher/standby.py) like the launcher's other SQL; AdminError with its message."""
    server = config.server
    conn = standby.Conn(config.listen_host, config.port, server.user, server.password)
    return standby.psql_records(conn, sql, database=database, timeout=timeout)
