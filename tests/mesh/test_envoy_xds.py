"""The control plane driving a real Envoy 1.40 over ADS: endpoints follow registrations within 2 s,
a NACKed update is reported and Envoy keeps its previous config, and Envoy keeps serving while the
control plane is down."""

from __future__ import annotations

import time

import grpc
import pytest
from capsule.mesh.v1 import registry_pb2, registry_pb2_grpc
from controlplane import resources as rs
from controlplane.snapshot import Snapshot
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from launcher.process import free_port
from tests.mesh.conftest import XdsMesh

pytestmark = pytest.mark.slow(7)  # scheduled first: see tests/conftest.py


async def register(mesh: XdsMesh, address: str) -> str:
    host, port = address.rsplit(":", 1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.cp_port}") as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        response = await stub.Register(
            registry_pb2.RegisterRequest(
                instance=registry_pb2.ServiceInstance(service="auth", host=host, port=int(port), zone="local")
            ),
            timeout=5,
        )
    return str(response.lease_id)


async def deregister(mesh: XdsMesh, lease_id: str) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.cp_port}") as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        response = await stub.Deregister(registry_pb2.DeregisterRequest(lease_id=lease_id), timeout=5)
    return bool(response.drained)


async def test_endpoints_follow_registrations_within_two_seconds(xds_mesh: XdsMesh) -> None:
    a, b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    await xds_mesh.start_instance(a)
    await xds_mesh.start_instance(b)
    await xds_mesh.start_plane()
    lease_a = await register(xds_mesh, a)
    await xds_mesh.start_envoy()
    await xds_mesh.wait_for("a healthy", lambda: _healthy(xds_mesh, {a}))
    assert {await xds_mesh.call() for _ in range(5)} == {a}

    started = time.monotonic()
    await register(xds_mesh, b)
    await xds_mesh.wait_for("b in Envoy", lambda: _present(xds_mesh, {a, b}), timeout=2.0)
    assert time.monotonic() - started < 2.0
    await xds_mesh.wait_for("b healthy", lambda: _healthy(xds_mesh, {a, b}))
    seen: set[str] = set()
    while seen != {a, b}:
        seen.add(await xds_mesh.call())

    started = time.monotonic()
    assert await deregister(xds_mesh, lease_a)  # answered once Envoy acknowledged the removal
    assert set(await xds_mesh.health()) == {b}
    assert time.monotonic() - started < 2.0
    assert {await xds_mesh.call() for _ in range(10)} == {b}
    status = await xds_mesh.cp_admin("/status")
    node = status["nodes"][xds_mesh.node_id]
    assert node["connected"] and node["acked"] == node["versions"]


async def test_a_nacked_update_is_reported_and_envoy_keeps_the_previous_config(xds_mesh: XdsMesh) -> None:
    a = f"127.0.0.1:{free_port()}"
    await xds_mesh.start_instance(a)
    plane = await xds_mesh.start_plane()
    await register(xds_mesh, a)
    await xds_mesh.start_envoy()
    await xds_mesh.wait_for("a healthy", lambda: _healthy(xds_mesh, {a}))
    good = plane.cache.default
    assert good is not None
    before = await xds_mesh.cds_version()
    assert before == good.version(rs.CLUSTER)

    # A deliberately invalid update for this Envoy: a negative connect timeout (Envoy's proto
    # validation requires > 0). It passes our consistency check, so only Envoy can refuse it.
    clusters = [Cluster.FromString(c.SerializeToString()) for c in good.resources[rs.CLUSTER].values()]
    clusters[0].connect_timeout.FromMilliseconds(-1000)
    bad = Snapshot.of({**{t: list(good.resources[t].values()) for t in rs.PUSH_ORDER}, rs.CLUSTER: clusters})
    plane.cache.set_snapshot(bad, node_id=xds_mesh.node_id)

    nacks = await xds_mesh.wait_for("a NACK", lambda: xds_mesh.cp_admin("/nacks"))
    (nack,) = nacks
    assert nack["node_id"] == xds_mesh.node_id and nack["type"] == "cds"
    assert nack["rejected_version"] == bad.version(rs.CLUSTER)
    assert nack["kept_version"] == before
    assert "connect_timeout" in nack["error"] or "Duration" in nack["error"] or nack["error"]
    # Envoy still runs the previous clusters and still routes.
    assert await xds_mesh.cds_version() == before
    assert {await xds_mesh.call() for _ in range(5)} == {a}
    stats = await xds_mesh.admin("/stats?format=json&filter=cluster_manager.cds.update_rejected")
    assert stats["stats"][0]["value"] >= 1
    # Not retried blindly: still one NACK after Envoy's next requests...
    assert len(await xds_mesh.cp_admin("/nacks")) == 1
    # ...and a corrected snapshot is accepted.
    plane.cache.clear_snapshot(xds_mesh.node_id)
    status = await xds_mesh.wait_for(
        "in sync again",
        lambda: _synced(xds_mesh),
    )
    assert status["acked"]["cds"] == before


async def test_envoy_keeps_serving_while_the_control_plane_restarts(xds_mesh: XdsMesh) -> None:
    a = f"127.0.0.1:{free_port()}"
    await xds_mesh.start_instance(a)
    plane = await xds_mesh.start_plane()
    await register(xds_mesh, a)
    await xds_mesh.start_envoy()
    await xds_mesh.wait_for("a healthy", lambda: _healthy(xds_mesh, {a}))
    versions = dict(plane.cache.default.versions)  # type: ignore[union-attr]
    await plane.stop(0)
    xds_mesh.plane = None
    assert {await xds_mesh.call() for _ in range(20)} == {a}  # last config, still serving
    # A new control plane on the same port, with a warm-up: the instance registers again.
    plane = await xds_mesh.start_plane(warmup=0.5)
    await register(xds_mesh, a)
    status = await xds_mesh.wait_for("Envoy reconnected and in sync", lambda: _synced(xds_mesh), timeout=15)
    # Same state → same versions: nothing was pushed that Envoy did not already have.
    assert plane.cache.default.versions == versions  # type: ignore[union-attr]
    assert status["acked"]["eds"] == versions[rs.ENDPOINT]
    assert {await xds_mesh.call() for _ in range(5)} == {a}


async def _healthy(mesh: XdsMesh, addresses: set[str]) -> bool:
    view = await mesh.health()
    return {a for a, ok in view.items() if ok} == addresses


async def _present(mesh: XdsMesh, addresses: set[str]) -> bool:
    return set(await mesh.health()) == addresses


async def _synced(mesh: XdsMesh) -> dict[str, object] | None:
    status = await mesh.cp_admin("/status")
    node = status["nodes"].get(mesh.node_id)
    if node and node["connected"] and node["acked"] == node["versions"] and len(node["acked"]) == 4:
        return dict(node)
    return None
