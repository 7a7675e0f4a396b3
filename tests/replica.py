"""Standbys in tests.

- `replayed(infra)`: tests that write rows with SQL straight into a service's database bypass the
  service's read-your-writes (services/common/replicas.py): its reads of those rows may go to the
  standby before it replayed them. This waits until it has.
- `own_primary()` / `own_standby(primary)`: a fresh cluster (initdb) and a streaming standby of it,
  on free ports, for tests that pause, stop or damage a standby: the shared one (set-up's, on
  POSTGRES_REPLICA_PORT) serves every other test running meanwhile. A base backup of a fresh
  cluster takes a fraction of a second, one of the machine's (test databases and query-plan
  templates included) seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from bench import replicas as bench_replicas
from launcher import standby
from launcher.bootstrap import REPO
from launcher.infra import Infra, PostgresServer
from launcher.process import free_port
from launcher.stack import Host


async def replayed(infra: Infra, within: float = 15.0) -> None:
    """Return once the standby (if any) has replayed everything the primary wrote until now."""
    if infra.replica is not None:
        await bench_replicas.replayed(infra.postgres, [infra.replica], deadline=time.monotonic() + within, poll=0.01)


def conn(server: PostgresServer) -> standby.Conn:
    return standby.Conn(server.host, server.port, server.user, server.password)


def one(server: PostgresServer, sql: str, database: str = "postgres") -> str:
    return standby.psql(conn(server), sql, database=database)[0][0]


@contextmanager
def own_primary(like: PostgresServer, *, host: Host | None = None) -> Iterator[PostgresServer]:
    """A fresh Postgres cluster of `like`'s version and user (initdb, trust on 127.0.0.1,
    replication allowed) on a free port, run by the server's OS user like the machine's; stopped
    and deleted at the end. On `host` (tests/netns): inside its namespace, listening on its
    address, trusting the hosts of its network (`samenet`)."""
    major = int(one(like, "SHOW server_version_num")) // 10000
    bin_dir = standby._bin_dir(major)
    port = free_port()
    base = REPO / ".run" / "test-primaries"
    data_dir, log_file = standby.locations(port, base / f"p{port}", base / f"p{port}.log")
    shutil.rmtree(data_dir, ignore_errors=True)
    for parent in {data_dir.parent, log_file.parent}:
        parent.mkdir(parents=True, exist_ok=True)
        standby._chown_to_server_user(parent)
    run = standby._as_server_user
    subprocess.run(
        run([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", like.user, "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    address = host.address if host is not None else "127.0.0.1"
    if host is not None:
        with (data_dir / "pg_hba.conf").open("a") as hba:
            hba.write("host all all samenet trust\n")
    options = f"-p {port} -c listen_addresses={address} -c unix_socket_directories=''"
    start = run([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-o", options, "-l", str(log_file), "-w", "start"])
    subprocess.run(host.wrap(start) if host is not None else start, check=True, capture_output=True)
    try:
        yield PostgresServer(address, port, like.user, "")
    finally:
        subprocess.run(run([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "stop"]), check=False)
        shutil.rmtree(data_dir, ignore_errors=True)
        log_file.unlink(missing_ok=True)


@contextmanager
def own_standby(primary: PostgresServer) -> Iterator[tuple[PostgresServer, standby.Standby]]:
    """A streaming hot standby of `primary` (launcher/standby.py) on a free port; removed at the end
    (its slot dropped)."""
    port = free_port()
    asked = REPO / ".run" / "test-standbys" / uuid.uuid4().hex[:10]
    data_dir, log_file = standby.locations(port, asked, asked.parent / f"{asked.name}.log")
    made = standby.ensure(conn(primary), port=port, data_dir=data_dir, log_file=log_file)
    try:
        yield PostgresServer("127.0.0.1", port, primary.user, primary.password), made
    finally:
        standby.remove(conn(primary), port, data_dir)
        log_file.unlink(missing_ok=True)
        if data_dir.parent.is_dir() and not any(data_dir.parent.iterdir()):
            shutil.rmtree(data_dir.parent, ignore_errors=True)
