"""The mesh a benchmark measures: one it starts itself, or a running `make up` it attaches to.

    with open_mesh(work_dir, attach=False) as mesh:
        mesh.gateway_url, mesh.envoy_grpc, mesh.dsns, mesh.processes, mesh.spawn(...)

Own mesh: launcher.stack.Stack with StackSettings.for_tests (free ports, databases `<name>_t<hex>`
dropped at the end, its own Redis prefix), every service at the topology's instance count, the
gateway's rate limiter in the path with limits raised out of the way (one user's token drives
every request: SPEC §7's 600/min would answer 429s, which is not what is measured).

Attached: the mesh answering on GATEWAY_PORT (8080) / ENVOY_PORT (10000); its processes are found
from the gateway's listening socket: the gateway's parent is the launcher, whose children are the
mesh (named by their SERVICE_INSTANCE / command line, admin addresses from their ADMIN_LISTEN).
Nothing of it is stopped or changed; its databases are the default ones (auth, recipients, capsules).

Either way the bench sees: URLs, each service's database, every process by name (CPU per request,
py-spy), the instances' admin addresses (gRPC OK counters), and `spawn` for extra processes
(the baselines), stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.cpu import pid_of
from launcher.infra import Infra, PostgresServer
from launcher.keys import KeyPair
from launcher.process import ManagedProcess, http_ok, port_open, stop_all
from launcher.stack import Stack, StackSettings
from mesh.topology import SERVICES

# Raised, not disabled: the limiter's Redis call stays in every request's path.
BENCH_RATE_LIMITS = {"GATEWAY_RATELIMIT_USER": "100000000/60", "GATEWAY_RATELIMIT_IP": "1000000/60"}


@dataclass(frozen=True)
class MeshProcess:
    """One process of the mesh: gateway, envoy, control-plane, or a service instance (auth-0…)."""

    name: str
    pid: int
    service: str | None = None
    admin_address: str | None = None
    python: bool = True


@dataclass
class BenchMesh:
    gateway_url: str
    envoy_grpc: str
    redis_url: str
    postgres: PostgresServer
    # Service name → its database's name.
    databases: dict[str, str]
    processes: list[MeshProcess]
    log_dir: Path
    _spawn: Callable[[str, Sequence[str], Callable[[], bool]], ManagedProcess] = field(repr=False)
    _backends: BackendLister | None = field(default=None, repr=False)
    # The streaming standbys the instances read from (bench.replicas.wait_caught_up finds them).
    standbys: list[PostgresServer] = field(default_factory=list)
    _standby_backends: list[BackendLister] = field(default_factory=list, repr=False)

    @property
    def dsns(self) -> dict[str, str]:
        """Service name → asyncpg DSN of its database."""
        return {service: self.postgres.dsn(name) for service, name in self.databases.items()}

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.processes}

    def admin_addresses(self, service: str | None = None) -> list[str]:
        """The admin (/metrics) addresses of a service's instances; of every instance without one."""
        return [
            p.admin_address
            for p in self.processes
            if p.admin_address and p.service is not None and service in (None, p.service)
        ]

    def spawn(self, name: str, argv: Sequence[str], ready: Callable[[], bool]) -> ManagedProcess:
        """An extra process (logged to <log_dir>/<name>.log), ready when `ready()`, stopped at the end."""
        return self._spawn(name, argv, ready)

    def postgres_backends(self) -> list[int]:
        """Pids of the Postgres backends connected to the mesh's databases (for their CPU)."""
        if self._backends is None:
            self._backends = BackendLister(self.postgres.dsn("postgres"), list(self.databases.values()))
        return self._backends()

    def standby_backends(self) -> list[int]:
        """Pids of the backends of the standbys (on this machine) serving the mesh's databases."""
        if not self._standby_backends:
            databases = list(self.databases.values())
            self._standby_backends = [BackendLister(s.dsn("postgres"), databases) for s in self.standbys]
        return [pid for lister in self._standby_backends for pid in lister()]

    def close(self) -> None:
        if self._backends is not None:
            self._backends.close()
            self._backends = None
        for lister in self._standby_backends:
            lister.close()
        self._standby_backends = []


class BackendLister:
    """Lists the pids of the Postgres backends serving some databases (pg_stat_activity), over one
    connection kept open for the whole run: a shared server may have no free slot mid-run."""

    def __init__(self, dsn: str, databases: list[str]) -> None:
        self.databases = databases
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection = self._loop.run_until_complete(asyncpg.connect(dsn))

    def __call__(self) -> list[int]:
        query = "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[])"
        rows = self._loop.run_until_complete(self._conn.fetch(query, self.databases))
        return [int(r["pid"]) for r in rows]

    def close(self) -> None:
        self._loop.run_until_complete(self._conn.close())
        self._loop.close()


@contextmanager
def open_mesh(
    infra: Infra, keys: KeyPair, work_dir: Path, *, attach: bool, mesh_tls: bool = True
) -> Iterator[BenchMesh]:
    """The mesh to measure (see the module's docstring); everything started here stops on exit.
    `mesh_tls`: the own mesh's internal hops speak mutual TLS (as `make up`), else plain text."""
    opened = _attached(infra, work_dir) if attach else _own(infra, keys, work_dir, mesh_tls)
    with opened as mesh:
        try:
            yield mesh
        finally:
            mesh.close()


@contextmanager
def _own(infra: Infra, keys: KeyPair, work_dir: Path, mesh_tls: bool) -> Iterator[BenchMesh]:
    settings = StackSettings.for_tests(
        infra, keys, work_dir=work_dir, log_level="WARNING", gateway_env=dict(BENCH_RATE_LIMITS), mesh_tls=mesh_tls
    )
    with Stack(settings) as stack:
        yield BenchMesh(
            gateway_url=stack.gateway_url,
            envoy_grpc=stack.envoy_grpc,
            redis_url=stack.redis_url,
            postgres=infra.postgres,
            databases={spec.name: stack.database_name(spec.name) for spec in settings.services},
            processes=_stack_processes(stack),
            log_dir=stack.log_dir,
            _spawn=lambda name, argv, ready: stack.spawn(name, argv, ready=ready),
        )


def _stack_processes(stack: Stack) -> list[MeshProcess]:
    found = [
        MeshProcess(inst.name, pid_of(inst.process), inst.service.name, inst.admin_address)
        for insts in stack.instances.values()
        for inst in insts
    ]
    if stack.control_plane is not None:
        found.insert(0, MeshProcess("control-plane", pid_of(stack.control_plane)))
    if stack.envoy is not None:
        found.insert(0, MeshProcess("envoy", pid_of(stack.envoy), python=False))
    if stack.gateway is not None:
        found.insert(0, MeshProcess("gateway", pid_of(stack.gateway)))
    return found


@contextmanager
def _attached(infra: Infra, work_dir: Path) -> Iterator[BenchMesh]:
    host = "127.0.0.1"
    gateway_port = int(os.environ.get("GATEWAY_PORT") or 8080)
    envoy_port = int(os.environ.get("ENVOY_PORT") or 10000)
    gateway_url = f"http://{host}:{gateway_port}"
    if not http_ok(f"{gateway_url}/readyz") or not port_open(host, envoy_port):
        raise SystemExit(f"--attach: no mesh answers on {gateway_url} and {host}:{envoy_port} (start `make up`)")
    processes = find_running_mesh(gateway_port)
    log_dir = work_dir / "logs"
    extra: list[ManagedProcess] = []

    def spawn(name: str, argv: Sequence[str], ready: Callable[[], bool]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, env=dict(os.environ), log_path=log_dir / f"{name}.log", ready=ready)
        extra.append(proc)
        return proc.start().wait_ready(60.0)

    try:
        yield BenchMesh(
            gateway_url=gateway_url,
            envoy_grpc=f"{host}:{envoy_port}",
            redis_url=infra.redis_url,
            postgres=infra.postgres,
            databases={spec.name: spec.database for spec in SERVICES},
            processes=processes,
            log_dir=log_dir,
            _spawn=spawn,
        )
    finally:
        stop_all([p for p in extra if p.running], timeout=10.0)


# --- finding a running mesh's processes (/proc, read only) ---------------------------------------


def find_running_mesh(gateway_port: int) -> list[MeshProcess]:
    """The processes of the mesh whose gateway listens on `gateway_port`: the gateway's parent
    (the launcher of `make up`) and its children, each named; [] when not found (not ours to read)."""
    gateway = listening_pid(gateway_port)
    if gateway is None:
        return []
    launcher = _parent(gateway)
    # A gateway adopted by init (its launcher gone) or run by a container runtime has no launcher
    # whose children are exactly the mesh: then only the gateway itself is known.
    siblings = _children(launcher) if launcher > 1 else [gateway]
    found = [p for pid in siblings if (p := _describe(pid)) is not None]
    order = {"gateway": 0, "envoy": 1, "control-plane": 2}
    return sorted(found, key=lambda p: (order.get(p.name, 3), p.name))


def listening_pid(port: int) -> int | None:
    """The pid holding the TCP socket that listens on `port` (IPv4 or IPv6), from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    for proc in _pids():
        try:
            fds = os.listdir(f"/proc/{proc}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{proc}/fd/{fd}") in inodes:
                    return proc
            except OSError:
                continue
    return None


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _children(parent: int) -> list[int]:
    children = []
    for pid in _pids():
        try:
            if _parent(pid) == parent:
                children.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    return children


def _describe(pid: int) -> MeshProcess | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        raw_env = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    env = dict(item.split("=", 1) for item in raw_env if "=" in item)
    if env.get("SERVICE_INSTANCE"):
        # The service is the topology entry whose module the instance runs (`python -m <module>`).
        service = next((s.name for s in SERVICES if s.module in argv), None)
        return MeshProcess(env["SERVICE_INSTANCE"], pid, service, env.get("ADMIN_LISTEN"))
    if "controlplane" in argv:
        return MeshProcess("control-plane", pid)
    if "gateway" in argv:
        return MeshProcess("gateway", pid)
    if argv and os.path.basename(argv[0]) == "envoy":
        return MeshProcess("envoy", pid, python=False)
    return None


# --- talking to the mesh ---------------------------------------------------------------------------------


def login(gateway_url: str, email: str, password: str) -> str:
    """An access token from the public log-in, POST /v1/auth:login."""
    body = json.dumps({"email": email, "password": password}).encode()
    request = urllib.request.Request(
        f"{gateway_url}/v1/auth:login", data=body, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(json.load(response)["accessToken"])
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"log-in as {email} failed: {exc.code} {exc.read()[:300]!r}") from None


def grpc_ok_count(admin_addresses: Sequence[str], method: str) -> int:
    """How many calls of `method` the instances answered OK so far (their /metrics)."""
    pattern = re.compile(rf'grpc_server_handled_total\{{code="OK",method="{method}",service="[^"]+"\}} ([\d.e+]+)')
    total = 0
    for address in admin_addresses:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            text = response.read().decode()
        total += sum(int(float(m.group(1))) for m in pattern.finditer(text))
    return total
