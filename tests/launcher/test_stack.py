"""launcher.stack.Stack end to end with stand-in processes (real Postgres, Redis and Envoy):
migrations, start order, readiness, Envoy health, fail-fast, instance restarts, clean-up."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from launcher.infra import Infra
from launcher.keys import KeyPair
from launcher.process import StartupError, free_port, port_open
from launcher.stack import Stack, StackSettings
from mesh.topology import AUTH, SERVICES

pytestmark = pytest.mark.slow(12)  # scheduled first: see tests/conftest.py

STANDIN = replace(AUTH, module="tests.launcher.standin")


def settings(infra: Infra, keys: KeyPair, tmp_path: Path, **overrides: object) -> StackSettings:
    args: dict[str, object] = {"services": (STANDIN,), "gateway_module": "tests.launcher.standin_gateway"}
    args.update(overrides)
    return StackSettings.for_tests(infra, keys, work_dir=tmp_path, **args)


async def database_exists(infra: Infra, name: str) -> bool:
    conn = await asyncpg.connect(infra.postgres.dsn("postgres"))
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


@pytest.fixture
def standin_stack(infra: Infra, jwt_keys: KeyPair, tmp_path: Path) -> Iterator[Stack]:
    with Stack(settings(infra, jwt_keys, tmp_path)) as stack:
        yield stack


def test_a_stack_whose_timings_break_a_relation_does_not_start(infra: Infra, jwt_keys: KeyPair, tmp_path: Path) -> None:
    """mesh/timing.py's relations, checked before any process starts: a drain delay shorter than
    Envoy's health checks need, given to the services through service_env."""
    stack = Stack(settings(infra, jwt_keys, tmp_path, service_env={"DRAIN_DELAY_SECONDS": "1"}))
    with pytest.raises(StartupError, match="drain delay ≥ health-check interval"):
        stack.start()
    assert stack.control_plane is None and not stack.log_dir.exists()
    assert settings(infra, jwt_keys, tmp_path).timing().check()  # the defaults keep them


async def test_isolation_settings_are_unique(infra: Infra, jwt_keys: KeyPair, tmp_path: Path) -> None:
    a = Stack(settings(infra, jwt_keys, tmp_path / "a"))
    b = Stack(settings(infra, jwt_keys, tmp_path / "b"))
    assert a.database_urls["auth"] != b.database_urls["auth"]
    assert a.database_name("auth").startswith("auth_t")
    assert a.cache_prefix != b.cache_prefix and a.cache_prefix.startswith("test:")
    assert len({a.settings.gateway_port, a.settings.envoy_port, a.settings.envoy_admin_port, *a.addresses("auth")}) == 5
    env = a.service_env(a.instances["auth"][0])
    assert env["GRPC_LISTEN"] == a.addresses("auth")[0]
    assert env["DATABASE_URL"] == a.database_urls["auth"]
    assert env["REDIS_URL"] == infra.redis_url and env["CACHE_PREFIX"] == a.cache_prefix
    assert env["JWT_PUBLIC_KEY_FILE"] == str(jwt_keys.public)
    assert env["JWT_PRIVATE_KEY_FILE"] == str(jwt_keys.private)  # auth signs
    assert env["PAGE_TOKEN_KEYS"] == jwt_keys.page_token_keys() != ""
    assert "PAGE_TOKEN_KEYS" not in a.gateway_env()  # the gateway never reads a page token
    assert (env["ARGON2_TIME_COST"], env["ARGON2_MEMORY_KIB"]) == ("1", "8192")
    assert env["RECIPIENTS_TARGET"] == ""  # not in this topology
    assert env["AUTH_TARGET"] == a.envoy_grpc
    gw = a.gateway_env()
    assert gw["GATEWAY_UPSTREAM"] == a.envoy_grpc
    assert gw["GATEWAY_PROTO_MODULES"] == "capsule.auth.v1.auth_pb2"


def test_the_gateway_is_proxyless_with_a_control_plane_and_calls_envoy_without(
    infra: Infra, jwt_keys: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bootstrap in the caller's environment must not reach the stack's gateways (each writes its own).
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP_CONFIG", "{}")
    with_plane = Stack(replace(settings(infra, jwt_keys, tmp_path / "a"), control_plane=True))
    gw = with_plane.gateway_env()
    assert gw["GATEWAY_XDS_SERVER"] == with_plane.control_plane_target
    assert "GRPC_XDS_BOOTSTRAP_CONFIG" not in gw
    # The static bootstrap is the plain-text development fallback (no SDS without a control plane).
    without = Stack(replace(settings(infra, jwt_keys, tmp_path / "b"), control_plane=False, mesh_tls=False))
    assert without.gateway_env()["GATEWAY_XDS_SERVER"] == ""  # CONTROL_PLANE=0: through Envoy


async def test_whole_stack_starts_serves_and_cleans_up(infra: Infra, jwt_keys: KeyPair, tmp_path: Path) -> None:
    stack = Stack(settings(infra, jwt_keys, tmp_path))
    await asyncio.to_thread(stack.start)
    try:
        # Migration ran (the stand-in creates its database), every process is up, logs are written.
        assert await database_exists(infra, stack.database_name("auth"))
        assert stack.envoy_health("auth") == {a: True for a in stack.addresses("auth")}
        answers = {await asyncio.to_thread(get, f"{stack.gateway_url}/probe") for _ in range(30)}
        assert answers == set(stack.addresses("auth"))  # gateway → Envoy → both instances
        for name in ("auth-migrate", "envoy", "auth-0", "auth-1", "gateway"):
            assert stack.log_path(name).exists(), name
        assert stack.envoy_config_path.exists()

        # Kill one instance: Envoy takes it out; restart it: back in.
        victim = stack.instances["auth"][0]
        await stack.akill_instance(victim)
        await stack.await_envoy_health("auth", healthy=[stack.addresses("auth")[1]], unhealthy=[victim.grpc_address])
        for _ in range(10):
            assert await asyncio.to_thread(get, f"{stack.gateway_url}/probe") == stack.addresses("auth")[1]
        await stack.astart_instance("auth", 0)
        await stack.await_envoy_health("auth", healthy=2)

        # SIGTERM is a graceful stop: exit code 0.
        assert await stack.astop_instance(stack.instances["auth"][1]) == 0
    finally:
        await asyncio.to_thread(stack.close)
    processes = [i.process for i in stack.instances["auth"]] + [stack.envoy, stack.gateway]
    assert all(p is not None and not p.running for p in processes)
    assert not port_open("127.0.0.1", stack.settings.gateway_port)
    assert not port_open("127.0.0.1", stack.settings.envoy_port)
    assert not await database_exists(infra, stack.database_name("auth"))
    stack.close()  # idempotent


def test_a_process_that_dies_at_start_fails_fast_with_its_log(infra: Infra, jwt_keys: KeyPair, tmp_path: Path) -> None:
    stack = Stack(settings(infra, jwt_keys, tmp_path, service_env={"STANDIN_EXIT_AT_START": "3"}))
    started = time.monotonic()
    with pytest.raises(StartupError) as err:
        stack.__enter__()  # what `with Stack(...)` does: start, and close on failure
    assert time.monotonic() - started < 20
    message = str(err.value)
    assert "auth-0 exited with code 3" in message
    assert "exiting at start with code 3 as asked" in message  # the log tail is in the error
    assert stack.envoy is None  # nothing after the failed step was started...
    assert not any(i.process.running for i in stack.instances["auth"])  # ...and what had started is stopped


def test_a_failing_migration_stops_the_start(infra: Infra, jwt_keys: KeyPair, tmp_path: Path) -> None:
    broken = replace(STANDIN, module="tests.launcher.no_such_module")
    stack = Stack(settings(infra, jwt_keys, tmp_path, services=(broken,)))
    with pytest.raises(StartupError, match="auth-migrate failed"):
        stack.start()
    stack.close()
    assert stack.envoy is None  # nothing started after the failed migration


async def test_two_stacks_side_by_side(infra: Infra, jwt_keys: KeyPair, tmp_path: Path) -> None:
    """Two Envoys on one machine (distinct --base-id), distinct databases and prefixes; started and
    stopped at the same time, as two test processes do."""
    one = settings(infra, jwt_keys, tmp_path / "one", instances={"auth": 1}, with_gateway=False)
    two = settings(infra, jwt_keys, tmp_path / "two", instances={"auth": 1}, with_gateway=False)
    a, b = Stack(one), Stack(two)
    try:
        await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
        assert a.envoy is not None and b.envoy is not None
        assert a.envoy.running and b.envoy.running
        assert a.database_name("auth") != b.database_name("auth")
        assert "--base-id" in a.envoy_argv()
        assert (
            a.envoy_argv()[a.envoy_argv().index("--base-id") + 1]
            != b.envoy_argv()[b.envoy_argv().index("--base-id") + 1]
        )
    finally:
        await asyncio.gather(asyncio.to_thread(a.close), asyncio.to_thread(b.close))


def test_free_ports_are_never_handed_out_twice_and_avoid_the_ephemeral_range() -> None:
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert not any(low <= port <= high for port in ports)  # outgoing connections' source ports
    for port in ports[:20]:  # each was bindable when handed out
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_test_databases_have_plain_names(infra: Infra, jwt_keys: KeyPair, tmp_path: Path) -> None:
    """What a test stack names its databases reads the same unquoted in SQL: lower-case letters,
    digits and '_', at most 63 bytes (Postgres folds case and cuts longer names)."""
    stack = Stack(settings(infra, jwt_keys, tmp_path, services=SERVICES))
    for spec in SERVICES:
        assert re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", stack.database_name(spec.name)), spec.name
