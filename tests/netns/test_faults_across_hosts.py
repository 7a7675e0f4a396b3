"""The mesh across hosts, under the faults of a real network (SPEC §10, extended).

Every process on a host of its own (tests/netns/network.py): Postgres and Redis on `db`, the
control plane, Envoy, the gateway, and three auth instances; this machine reaches them over the
bridge. `auth-2` is the faulty one; its link is emulated, so it can be slowed down as well as cut.
The whole module runs twice, once per way the gateway reaches the instances:
- `proxyless` (the default): gRPC's xDS client balances across the instances; the gateway hedges
  idempotent calls itself and PINGs busy connections every second (gateway/upstream.py);
- `envoy` (GATEWAY_PROXYLESS=0): through Envoy, whose outlier detection, hedging and health checks
  act.

Under a steady load through the gateway (reads, and sign-ups with an Idempotency-Key that the
client repeats after a failed answer, as a mobile app does):
- 200 ms added to everything auth-2 sends: no call fails, p99 under the mode's bounds; through
  Envoy, outlier detection ejects auth-2 (hedged reads time out there after 0.15 s); healed, it
  serves again;
- 30 % of auth-2's packets lost, both ways: the same;
- auth-2 cut off: its lease lapses and its endpoint leaves the set Envoy and the gateway route to
  within 2 s; no call fails; healed (the partition that heals), it registers again and serves;
- the control plane cut off: nothing fails; healed, every instance is routed to again.
And across all of it no write is doubled: one account per sign-up, every one answered 200.

Each phase prints its figures (p50/p99, calls, failed calls); `make test ARGS="tests/netns -s"`
shows them. The module skips, saying why, where namespaces cannot be made (not root, no
iproute2/nftables, a kernel without veth, bridges or TAP devices).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from launcher import infra as infra_mod
from launcher.keys import KeyPair
from launcher.stack import Host, Stack
from mesh.pki import CONTROL_PLANE, ENVOY, GATEWAY
from mesh.topology import AUTH
from tests.conftest import start_test_stack
from tests.mesh.load import Load, LoadResult, Op
from tests.metrics import scraped
from tests.netns.network import Network, unavailable_reason
from tests.ratelimit.redis_server import RedisServer
from tests.replica import own_primary

# `alone`: p99 bounds hold with the machine to itself, not beside three other test processes on
# two cores (launcher/__main__.py runs these last, in one process).
pytestmark = [pytest.mark.slow(70), pytest.mark.alone]


@dataclass(frozen=True)
class Bounds:
    """p99 through the gateway during a fault, the moment it starts included."""

    reads: float
    calls: float


# Through Envoy: a hedged read waits 0.15 s (mesh/timing.py HEDGE_AFTER_S) on the faulty instance
# before its second try, which Envoy sends to another one. A sign-up that reached the faulty
# instance before its ejection waits the fault out, once per round trip it makes (to Postgres, to
# Redis): 200 ms each, or TCP's retransmission timeouts after a lost packet (0.2 s, 0.4 s, ...).
# Sign-ups are 1 call in 7 here.
# Proxyless: gRPC cannot be told to avoid an instance, so a hedge may land on the faulty one
# again (the gateway sends up to four, at 0.15, 0.45, 1.05 and 2.25 s), and nothing ejects a slow
# or lossy instance (gRPC's outlier detection counts failed calls, not slow ones): its share of
# the sign-ups waits the fault out. With one instance in three faulty, a read whose first three
# attempts all land on it (1 in 27 of those that start there: ~1 % of reads) is answered by the
# fourth, after 1.05 s: p99 of reads sits just around 1 s (seen 0.41 to 1.06 s). The fifth, at
# 2.25 s, lands after the endpoint left a partitioned instance's balancer.
BOUNDS = {"envoy": Bounds(reads=0.5, calls=2.5), "proxyless": Bounds(reads=1.5, calls=4.0)}
# SPEC §2 / mesh/timing.py: an endpoint change reaches Envoy within 2 s.
ENDPOINT_CHANGE_BOUND_S = 2.0
RATE = 60.0


@dataclass
class Mesh:
    mode: str  # "proxyless" or "envoy": how the gateway reaches the instances
    network: Network
    stack: Stack
    faulty: Host
    database_dsn: str
    # Every sign-up client of the mesh: the last test compares what they were answered with the rows.
    signups: list[SignUps] = field(default_factory=list)

    @property
    def bounds(self) -> Bounds:
        return BOUNDS[self.mode]

    @property
    def via_envoy(self) -> bool:
        return self.mode == "envoy"


@pytest.fixture(scope="module", params=["proxyless", "envoy"])
def mesh(
    request: pytest.FixtureRequest, infra: infra_mod.Infra, jwt_keys: KeyPair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    mode = str(request.param)
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no hosts on this machine (network namespaces): {reason}")
    with Network.create() as network:
        db = network.add_host("db")
        hosts = {name: network.add_host(name) for name in (CONTROL_PLANE, ENVOY, GATEWAY, "auth-0", "auth-1")}
        hosts["auth-2"] = network.add_host("auth-2", emulated=True)
        redis = RedisServer(tmp_path_factory.mktemp("redis"), host=db).start()
        try:
            with own_primary(infra.postgres, host=db) as postgres:
                remote = infra_mod.Infra(postgres=postgres, redis_url=redis.url)
                stack = start_test_stack(
                    remote,
                    jwt_keys,
                    services=(AUTH,),
                    instances={"auth": 3},
                    hosts=hosts,
                    gateway_proxyless=mode == "proxyless",
                    read_replica=False,
                    gateway_env={"GATEWAY_RATELIMIT_ENABLED": "0"},
                )
                try:
                    yield Mesh(mode, network, stack, hosts["auth-2"], postgres.dsn(stack.database_name("auth")))
                finally:
                    stack.close()
        finally:
            redis.kill()


@pytest.fixture(scope="module")
async def http(mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mesh.stack.gateway_url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
async def token(http: httpx.AsyncClient) -> str:
    name = f"nn{uuid.uuid4().hex[:10]}"
    signup = await http.post(
        "/v1/auth:signup",
        json={"email": f"{name}@example.com", "username": name, "password": "correct horse battery"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert signup.status_code == 200, signup.text
    return str(signup.json()["accessToken"])


class SignUps:
    """Sign-ups as a mobile client makes them: one Idempotency-Key per account, the same request
    sent again (up to 4 times) when the answer is a gateway error or none."""

    def __init__(self, mesh: Mesh, http: httpx.AsyncClient) -> None:
        self.http = http
        self.prefix = f"ns{uuid.uuid4().hex[:8]}"
        self.numbers = itertools.count()
        self.answered: dict[str, str] = {}  # username → user id of the 200 answer
        self.repeated = 0
        mesh.signups.append(self)

    async def __call__(self) -> httpx.Response:
        name = f"{self.prefix}{next(self.numbers)}"
        body = {"email": f"{name}@example.com", "username": name, "password": "correct horse battery"}
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        for attempt in range(4):
            if attempt:
                self.repeated += 1
            try:
                response = await self.http.post("/v1/auth:signup", json=body, headers=headers)
            except httpx.TransportError:
                continue
            if response.status_code in (502, 503, 504):
                continue
            if response.status_code == 200:
                self.answered[name] = response.json()["user"]["id"]
            return response
        return response


def ops(http: httpx.AsyncClient, token: str, signups: SignUps) -> list[Op]:
    auth = {"Authorization": f"Bearer {token}"}
    reads = [
        Op("GetMe", lambda: http.get("/v1/me", headers=auth)),
        Op("CheckUsername", lambda: http.get(f"/v1/usernames/free{uuid.uuid4().hex[:8]}")),
        Op("SearchUsers", lambda: http.get("/v1/users:search", params={"query": "nn"}, headers=auth)),
    ]
    return [*reads, *reads, Op("SignUp", signups, idempotent=False)]


READS = ("GetMe", "CheckUsername", "SearchUsers")
WRITES = ("SignUp",)


def envoy_hosts(stack: Stack) -> dict[str, dict[str, Any]]:
    """Envoy's auth cluster: "address:port" → its health flags (failed_outlier_check, ...)."""
    with urllib.request.urlopen(f"{stack.envoy_admin_url}/clusters?format=json", timeout=2) as response:
        data = json.load(response)
    hosts: dict[str, dict[str, Any]] = {}
    for status in data.get("cluster_statuses", []):
        if status.get("name") == "auth":
            for host in status.get("host_statuses", []):
                sock = host["address"]["socket_address"]
                hosts[f"{sock['address']}:{sock['port_value']}"] = host.get("health_status", {})
    return hosts


def routable(flags: dict[str, Any]) -> bool:
    rest = dict(flags)
    return rest.pop("eds_health_status", "HEALTHY") == "HEALTHY" and not any(rest.values())


def served(stack: Stack, index: int) -> float:
    return scraped(
        stack.instance("auth", index).admin_address,
        r'grpc_server_handled_total\{[^}]*service="capsule\.auth\.v1\.AuthService"[^}]*\} (\S+)',
    )


async def until(predicate: Any, timeout: float, what: str) -> float:  # noqa: ASYNC109 (a poll)
    """Poll `predicate` (run in a thread) until true; the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.05)  # polling interval
    return time.monotonic() - started


def report(mesh: Mesh, phase: str, result: LoadResult, extra: str = "") -> None:
    print(
        f"\n[netns {mesh.mode}] {phase}: {result.total} calls, {len(result.failures)} failed, "
        f"p50 {result.percentile(0.5) * 1000:.0f} ms, p99 {result.percentile(0.99) * 1000:.0f} ms, "
        f"reads p99 {result.percentile(0.99, READS) * 1000:.0f} ms, "
        f"sign-ups p50 {result.percentile(0.5, WRITES) * 1000:.0f} ms "
        f"p99 {result.percentile(0.99, WRITES) * 1000:.0f} ms, "
        f"max {max((d for _, d in result.durations), default=0) * 1000:.0f} ms{extra}"
    )


def assert_no_failed_call(mesh: Mesh, result: LoadResult) -> None:
    assert result.total > 0
    assert result.failures == [], result.failures[:5]
    assert result.percentile(0.99, READS) < mesh.bounds.reads
    assert result.percentile(0.99) < mesh.bounds.calls


async def back_in_rotation(mesh: Mesh, load: Load) -> float:
    """Once healed: auth-2 answers calls again (through Envoy: once Envoy routes to it); the
    seconds it took."""
    address = mesh.stack.instance("auth", 2).grpc_address
    started = time.monotonic()
    if mesh.via_envoy:
        await until(lambda: routable(envoy_hosts(mesh.stack).get(address, {"gone": True})), 60, "auth-2 routable")
    before = await asyncio.to_thread(served, mesh.stack, 2)
    await load.until(60)
    await until(lambda: served(mesh.stack, 2) > before + 5, 30, "auth-2 serving again")
    return time.monotonic() - started


async def ejection(mesh: Mesh, ejected: Any) -> str:
    """Through Envoy: wait until `ejected()` (outlier detection took auth-2 out) and say after how
    long. Proxyless there is none to wait for (see Bounds)."""
    if not mesh.via_envoy:
        return "- (proxyless)"
    return f"{await until(ejected, 30, 'auth-2 ejected'):.1f} s"


async def test_every_process_is_on_a_host_of_its_own(mesh: Mesh, http: httpx.AsyncClient) -> None:
    stack = mesh.stack
    addresses = {
        stack.gateway_url.removeprefix("http://").rsplit(":", 1)[0],
        stack.envoy_grpc.rsplit(":", 1)[0],
        stack.control_plane_target.rsplit(":", 1)[0],
        *(inst.grpc_address.rsplit(":", 1)[0] for inst in stack.instances["auth"]),
    }
    assert len(addresses) == 6 and "127.0.0.1" not in addresses
    assert set(envoy_hosts(stack)) == set(stack.addresses("auth"))
    assert (await http.get("/readyz")).status_code == 200


async def test_baseline(mesh: Mesh, http: httpx.AsyncClient, token: str) -> None:
    load = Load(ops(http, token, SignUps(mesh, http)), rate=RATE).start()
    await load.until(150)
    result = await load.stop()
    report(mesh, "no fault", result)
    assert_no_failed_call(mesh, result)


async def test_a_slow_instance_is_ejected_and_returns_when_healed(
    mesh: Mesh, http: httpx.AsyncClient, token: str
) -> None:
    address = mesh.stack.instance("auth", 2).grpc_address
    load = Load(ops(http, token, SignUps(mesh, http)), rate=RATE).start()
    try:
        await load.until(30)
        mesh.network.delay(mesh.faulty, 0.2)
        ejected = await ejection(mesh, lambda: envoy_hosts(mesh.stack)[address].get("failed_outlier_check") is True)
        await load.until(150)
    finally:
        mesh.network.heal(mesh.faulty)
    back = await back_in_rotation(mesh, load)
    result = await load.stop()
    report(mesh, "200 ms on auth-2", result, f", ejected after {ejected}, back {back:.1f} s after healing")
    assert_no_failed_call(mesh, result)


async def test_a_lossy_instance_is_ejected_and_returns_when_healed(
    mesh: Mesh, http: httpx.AsyncClient, token: str
) -> None:
    address = mesh.stack.instance("auth", 2).grpc_address
    load = Load(ops(http, token, SignUps(mesh, http)), rate=RATE).start()
    try:
        await load.until(30)
        mesh.network.loss(mesh.faulty, 0.3)
        out = await ejection(mesh, lambda: not routable(envoy_hosts(mesh.stack).get(address, {})))
        how = envoy_hosts(mesh.stack).get(address, {"lease lapsed": True}) if mesh.via_envoy else {}
        await load.until(150)
    finally:
        mesh.network.heal(mesh.faulty)
    back = await back_in_rotation(mesh, load)
    result = await load.stop()
    flags = ", ".join(k for k, v in how.items() if v is True) or ("removed" if mesh.via_envoy else "-")
    report(mesh, "30 % loss on auth-2", result, f", out after {out} ({flags}), back {back:.1f} s after healing")
    assert_no_failed_call(mesh, result)


async def test_a_partitioned_instance_leaves_within_2s_and_returns_when_healed(
    mesh: Mesh, http: httpx.AsyncClient, token: str
) -> None:
    address = mesh.stack.instance("auth", 2).grpc_address
    signups = SignUps(mesh, http)
    load = Load(ops(http, token, signups), rate=RATE).start()
    try:
        await load.until(30)
        mesh.network.partition(mesh.faulty)
        gone = await until(lambda: address not in envoy_hosts(mesh.stack), 10, "auth-2's endpoint removed")
        await load.until(150)
    finally:
        mesh.network.heal(mesh.faulty)
    back = await back_in_rotation(mesh, load)
    result = await load.stop()
    report(
        mesh,
        "auth-2 partitioned",
        result,
        f", endpoint removed after {gone:.2f} s, back {back:.1f} s after healing, sign-ups repeated {signups.repeated}",
    )
    assert gone <= ENDPOINT_CHANGE_BOUND_S
    assert_no_failed_call(mesh, result)


async def test_a_partitioned_control_plane_fails_no_call(mesh: Mesh, http: httpx.AsyncClient, token: str) -> None:
    control_plane = mesh.network.hosts[CONTROL_PLANE]
    load = Load(ops(http, token, SignUps(mesh, http)), rate=RATE).start()
    try:
        await load.until(30)
        mesh.network.partition(control_plane)
        # Several leases long: every instance misses its heartbeats, Envoy its ADS stream.
        await load.until(int(RATE * 4))
    finally:
        mesh.network.heal(control_plane)
    await load.until(int(RATE * 3))
    result = await load.stop()
    report(mesh, "control plane partitioned", result)
    assert_no_failed_call(mesh, result)
    # Healed: every instance registered again, and Envoy routes to all three.
    await until(lambda: len([f for f in envoy_hosts(mesh.stack).values() if routable(f)]) == 3, 15, "all 3 back")


async def test_no_write_was_doubled_nor_lost(mesh: Mesh) -> None:
    """Across every phase: the accounts in the database are exactly those the clients were
    answered 200 for, with the ids they were answered (a repeat sent after a write had committed
    was answered from its idempotency record: same id, no second row, no 409)."""
    answered = {name: user_id for signups in mesh.signups for name, user_id in signups.answered.items()}
    prefixes = tuple({signups.prefix for signups in mesh.signups})
    conn = await asyncpg.connect(mesh.database_dsn)
    try:
        rows = await conn.fetch("SELECT username, id::text AS id FROM users WHERE username LIKE 'ns%'")
    finally:
        await conn.close()
    stored = {row["username"]: row["id"] for row in rows if row["username"].startswith(prefixes)}
    assert len(answered) > 100
    assert stored == answered
    repeated = sum(s.repeated for s in mesh.signups)
    print(f"\n[netns {mesh.mode}] sign-ups: {len(answered)} accounts, repeated {repeated} times, none doubled")
