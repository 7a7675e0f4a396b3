"""gRPC's own xDS client (what the gateway uses) fed by an in-process control plane, calling stand-in
instances (tests/launcher/standin.py) directly: a registered instance gets traffic within 2 s, and
one whose Deregister returned gets no call started after that (Deregister waited for this client's
ACK, not only Envoy's).

The channel runs in this process: grpcio reads the bootstrap from GRPC_XDS_BOOTSTRAP_CONFIG when it
creates the channel's xDS client, and drops that client with the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from capsule.mesh.v1 import registry_pb2, registry_pb2_grpc
from controlplane import proxyless
from controlplane import resources as rs
from controlplane.app import ControlPlane, ControlPlaneSettings
from controlplane.cache import PROXYLESS
from controlplane.snapshot import Snapshot
from envoy.config.cluster.v3 import cluster_pb2

from gateway import xds
from gateway.upstream import XDS_CHANNEL_OPTIONS
from launcher.process import free_port
from mesh.timing import TIMING
from mesh.topology import AUTH
from tests.mesh.conftest import XdsMesh

PROBE = f"/{AUTH.proto_service}/Probe"


@dataclass
class Calls:
    """A closed loop of Probe calls: (start time, answering instance) of each success, failures."""

    channel: grpc.aio.Channel
    answered: list[tuple[float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def one(self) -> None:
        started = time.monotonic()
        call = self.channel.unary_unary(PROBE)(b"", timeout=5)
        try:
            await call
        except grpc.aio.AioRpcError as error:
            self.failures.append(f"{error.code().name}: {error.details()}")
            return
        trailers = dict(await call.trailing_metadata() or ())
        self.answered.append((started, str(trailers["x-instance"])))

    async def loop(self) -> None:
        while True:
            await self.one()
            await asyncio.sleep(0.005)

    def since(self, moment: float) -> set[str]:
        return {instance for started, instance in self.answered if started >= moment}


@pytest.fixture
async def plane(xds_mesh: XdsMesh, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ControlPlane]:
    settings = ControlPlaneSettings(
        listen=f"127.0.0.1:{xds_mesh.cp_port}",
        admin_listen=f"127.0.0.1:{xds_mesh.cp_admin_port}",
        warmup_seconds=0,
        # The test registers the stand-ins itself and sends no heartbeats: leases must outlive it.
        timing=TIMING.with_lease_ttl(600),
        services=(AUTH,),
    )
    xds_mesh.plane = await ControlPlane(settings).start()
    # Set through monkeypatch so that it is undone: processes spawned later inherit os.environ.
    environ: dict[str, str] = {}
    assert xds.install_bootstrap(f"127.0.0.1:{xds_mesh.cp_port}", environ=environ) is not None
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP", raising=False)
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP_CONFIG", environ["GRPC_XDS_BOOTSTRAP_CONFIG"])
    yield xds_mesh.plane


async def test_registered_instances_get_calls_within_2s_and_deregistered_ones_none_after(
    xds_mesh: XdsMesh, plane: ControlPlane
) -> None:
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    await asyncio.gather(xds_mesh.start_instance(first), xds_mesh.start_instance(second))
    registry_channel = grpc.aio.insecure_channel(f"127.0.0.1:{xds_mesh.cp_port}")
    registry = registry_pb2_grpc.RegistryServiceStub(registry_channel)

    async def register(address: str) -> str:
        host, port = address.rsplit(":", 1)
        instance = registry_pb2.ServiceInstance(service="auth", host=host, port=int(port))
        return str((await registry.Register(registry_pb2.RegisterRequest(instance=instance))).lease_id)

    lease = await register(first)
    channel = grpc.aio.insecure_channel("xds:///capsule.auth.v1", options=XDS_CHANNEL_OPTIONS)
    calls = Calls(channel)
    workers: list[asyncio.Task[None]] = []
    try:
        await asyncio.wait_for(channel.channel_ready(), 10)
        workers = [asyncio.create_task(calls.loop()) for _ in range(4)]
        await asyncio.sleep(0.5)
        assert calls.since(0) == {first}

        # Registration → traffic within 2 s (SPEC §2).
        registered_at = time.monotonic()
        await register(second)
        await xds_mesh.wait_for(
            "calls on the new instance",
            lambda: asyncio.sleep(0, result=second in calls.since(registered_at)),
            timeout=2,
        )
        reached = min(t for t, i in calls.answered if i == second and t >= registered_at)
        assert reached - registered_at < 2.0

        # The gateway's node is counted by the drain: a proxyless stream watches endpoints.
        views = [v for v in plane.cache.streams.values() if plane.cache.kinds[v.node_id] == PROXYLESS]
        assert views and all(rs.ENDPOINT in v.watching for v in views)

        # Deregister returns once this client ACKed the endpoint set without `first`; from then
        # on no call may start on it.
        response = await registry.Deregister(registry_pb2.DeregisterRequest(lease_id=lease))
        returned_at = time.monotonic()
        assert response.drained
        current = plane.cache.default_for(PROXYLESS)
        assert current is not None
        assert all(v.acked.get(rs.ENDPOINT) == current.version(rs.ENDPOINT) for v in views)
        await asyncio.sleep(1.0)
        assert calls.since(returned_at) == {second}
        assert len([t for t, _ in calls.answered if t >= returned_at]) > 20
    finally:
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        await channel.close()
        await registry_channel.close()
    assert calls.failures == []
    assert plane.cache.nacks == []  # grpcio accepted every resource it was served


async def test_a_value_grpc_does_not_support_is_nacked_and_reported(xds_mesh: XdsMesh, plane: ControlPlane) -> None:
    """Why the proxyless clusters say ROUND_ROBIN: grpcio rejects LEAST_REQUEST (gRFC A48 is
    Java-only), and the control plane records the rejection (/nacks) instead of resending it.
    (Another package than the test above: grpcio keeps one xDS client per target name.)"""
    await asyncio.sleep(0.1)  # the warm-up task publishes the first snapshot
    good = plane.cache.default_for(PROXYLESS)
    assert good is not None
    cluster = proxyless.build_cluster(AUTH)
    cluster.lb_policy = cluster_pb2.Cluster.LEAST_REQUEST
    resources = {t: list(good.resources[t].values()) for t in rs.PUSH_ORDER}
    resources[rs.CLUSTER] = [cluster]
    plane.cache.set_snapshot(Snapshot.of(resources), kind=PROXYLESS)
    channel = grpc.aio.insecure_channel("xds:///grpc.reflection", options=XDS_CHANNEL_OPTIONS)
    try:
        channel.get_state(try_to_connect=True)
        await xds_mesh.wait_for("a NACK", lambda: asyncio.sleep(0, result=plane.cache.nacks), timeout=10)
    finally:
        await channel.close()
    assert {n.type_url for n in plane.cache.nacks} == {rs.CLUSTER}
    assert all("lb_policy error:LB policy is not supported" in n.error for n in plane.cache.nacks)
