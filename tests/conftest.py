"""Shared fixtures: the whole mesh on free ports, and what tests need to talk to it.

    stack                  the running mesh (launcher.stack.Stack): real Postgres, Redis, Envoy,
                           every service of the topology (2 instances each), the gateway.
                           Session-scoped (one per test process: pytest-xdist runs
                           three); started on first use, stopped at the end. Tests that
                           break things (kill instances, freeze Redis) start only what
                           they use. One test-only setting: capsules may unlock
                           CAPSULE_LEAD_SECONDS after they are sent (SPEC §6 says 1 minute;
                           tests watch capsules turn ready).
    gateway_url            "http://127.0.0.1:PORT"
    envoy_grpc             "127.0.0.1:PORT" (Envoy's gRPC listener; h2c)
    client                 httpx.AsyncClient on the gateway (session-scoped)
    jwt_private_key_file / jwt_public_key_file
    infra                  launcher.infra.Infra (Postgres server + Redis URL), probed, never installs
    postgres_admin_dsn     asyncpg DSN of the `postgres` database (to create/drop scratch databases)
    processes              function-scoped: start extra processes, all stopped after the test

Instances of a service: `stack.instances["auth"]` (list of launcher.stack.Instance: grpc_address,
admin_address, process); `stack.kill_instance(i)`, `stack.stop_instance(i)`,
`stack.start_instance("auth", index)`, `stack.wait_envoy_health("auth", healthy=..., unhealthy=...)`
and their `a…`/`await_…` coroutine twins for tests running load on the session loop.

Isolation: the stack's databases are `<name>_t<hex>` (dropped at the end) and its Redis prefix is
`test:<hex>:`, so tests never see a running `make up` nor another test session.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from launcher import infra as infra_mod
from launcher.bootstrap import REPO
from launcher.keys import DEFAULT_DIR as DEFAULT_KEYS_DIR
from launcher.keys import KeyPair, ensure_dev_keys
from launcher.process import ManagedProcess, stop_all, use_port_slice
from launcher.stack import Stack, StackSettings
from tests.ratelimit.redis_server import RedisServer

STACKS_DIR = REPO / ".run" / "test-stacks"
CAPSULE_LEAD_SECONDS = 1
KEEP_STACK_DIRS = 5


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI timeout, `kill`) → KeyboardInterrupt: pytest then runs fixture teardowns and the
    # stack's processes are stopped instead of being orphaned.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    # pytest-xdist's workers (gw0, gw1, ...) run at once: each hands out ports from its own slice.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw"):
        use_port_slice(int(worker[2:]), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1))
    # In-process servers and stand-ins that tests build themselves (a fake upstream for the
    # gateway, a control plane on the test's loop) speak plain text unless a test gives them an
    # identity: the development switch (mesh/credentials.py). The stacks' processes never inherit
    # it: the launcher hands each its own MESH_TLS_DIR (launcher/stack.py).
    os.environ.setdefault("MESH_PLAINTEXT", "1")
    # Tests that create their own scratch databases read this (with a trust-auth default).
    os.environ.setdefault("TEST_POSTGRES_ADMIN_DSN", infra_mod.configured().postgres.dsn("postgres"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked `slow(seconds)` run first, longest first (the order otherwise kept):
    pytest-xdist hands modules to its processes in this order (longest processing time first), so
    the run ends on short ones and the processes finish together instead of one waiting for
    another's long last module. The seconds are a module's measured share of a `make test` run,
    stack start included where it starts one."""

    def weight(item: pytest.Item) -> float:
        marker = item.get_closest_marker("slow")
        if marker is None:
            return 0.0
        return -float(marker.args[0]) if marker.args else -1.0

    items.sort(key=weight)


# Each test process holds a shared lock on the directories of the stacks it started, until it
# exits: pruning never deletes one in use (certificates and logs of a running stack), however many
# stacks the test processes run at once.
_STACK_DIR_LOCKS: list[int] = []


def _claim_stack_dir(work_dir: Path) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(work_dir / ".in-use", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _STACK_DIR_LOCKS.append(fd)


def _in_use(stack_dir: Path) -> bool:
    try:
        fd = os.open(stack_dir / ".in-use", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _prune_old_stack_dirs() -> None:
    if not STACKS_DIR.is_dir():
        return
    dirs = sorted((d for d in STACKS_DIR.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    for old in dirs[:-KEEP_STACK_DIRS]:
        if not _in_use(old):
            shutil.rmtree(old, ignore_errors=True)


@pytest.fixture(scope="session")
def infra() -> infra_mod.Infra:
    """Postgres and Redis as `python3 -m launcher test` set them up (probed; never installs)."""
    try:
        return infra_mod.ensure(install=False)
    except infra_mod.SetupError as exc:
        pytest.fail(f"{exc}\n(run the tests with `make test`, which sets Postgres and Redis up)", pytrace=False)


@pytest.fixture(scope="session")
def jwt_keys() -> KeyPair:
    return ensure_dev_keys(Path(os.environ.get("JWT_KEYS_DIR") or DEFAULT_KEYS_DIR))


@pytest.fixture(scope="session")
def jwt_private_key_file(jwt_keys: KeyPair) -> Path:
    return jwt_keys.private


@pytest.fixture(scope="session")
def jwt_public_key_file(jwt_keys: KeyPair) -> Path:
    return jwt_keys.public


@pytest.fixture(scope="session")
def postgres_admin_dsn(infra: infra_mod.Infra) -> str:
    return infra.postgres.dsn("postgres")


def start_test_stack(infra: infra_mod.Infra, keys: KeyPair, **overrides: Any) -> Stack:
    """Start a whole test stack (free ports, unique databases/prefix); the caller closes it.
    `overrides` are StackSettings fields (services=..., instances={"auth": 3}, service_env=...)."""
    _prune_old_stack_dirs()
    work_dir = STACKS_DIR / uuid.uuid4().hex[:12]
    _claim_stack_dir(work_dir)
    stack = Stack(StackSettings.for_tests(infra, keys, work_dir=work_dir, **overrides))
    try:
        stack.start()
    except BaseException:
        stack.close()
        raise
    return stack


@pytest.fixture(scope="session")
def stack(infra: infra_mod.Infra, jwt_keys: KeyPair) -> Iterator[Stack]:
    service_env = {
        "CAPSULE_MIN_UNLOCK_LEAD_SECONDS": str(CAPSULE_LEAD_SECONDS),
        # TEST-ONLY: disappearing letters may vanish 1 s after opening (SPEC §13 says 60).
        "CAPSULE_MIN_DISAPPEAR_SECONDS": "1",
        # TEST-ONLY: a stream consumer's unacked entries are taken over after 1 s (not 30 s).
        "STREAM_CLAIM_IDLE_MS": "1000",
        # TEST-ONLY: an account deletion's final pass 2 s after it (not 30 s).
        "ACCOUNT_DELETION_SETTLE_SECONDS": "2",
    }
    mesh = start_test_stack(infra, jwt_keys, service_env=service_env)
    try:
        yield mesh
    finally:
        mesh.close()


@pytest.fixture(scope="session")
def gateway_url(stack: Stack) -> str:
    return stack.gateway_url


@pytest.fixture(scope="session")
def envoy_grpc(stack: Stack) -> str:
    return stack.envoy_grpc


@pytest.fixture(scope="session")
async def client(stack: Stack) -> AsyncIterator[Any]:
    import httpx

    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30.0) as http:
        yield http


class Processes:
    """Extra processes for one test; every one still running is stopped when the test ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ManagedProcess] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready: Any = None,
        timeout: float = 60.0,
    ) -> ManagedProcess:
        """Start `argv` (env added to os.environ), log to <log_dir>/<name>.log, wait for `ready`
        (a () -> bool probe, e.g. launcher.process.GrpcHealthProbe(address, service))."""
        proc = ManagedProcess(
            name, argv, env={**os.environ, **(env or {})}, log_path=self.log_dir / f"{name}.log", ready=ready
        )
        self.started.append(proc)
        proc.start().wait_ready(timeout)
        return proc

    def stop_all(self, timeout: float = 15.0) -> None:
        stop_all([p for p in self.started if p.running], timeout)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    group = Processes(tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server of the test's own (frozen, killed, restarted by outage tests)."""
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.kill()
