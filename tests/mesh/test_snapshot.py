"""The snapshot builder: resources from mesh's builders, per-type versions, consistency, and
endpoint changes that rebuild the endpoints only."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from controlplane import proxyless
from controlplane import resources as rs
from controlplane.app import ControlPlane, ControlPlaneSettings
from controlplane.cache import PROXYLESS
from controlplane.registry import Endpoint
from controlplane.snapshot import (
    TOPOLOGY_TYPES,
    InconsistentSnapshot,
    MeshSnapshots,
    Snapshot,
    build_assignments,
    build_proxyless_snapshot,
    build_snapshot,
    check_consistent,
)
from envoy.config.cluster.v3 import cluster_pb2

from mesh import envoy_config
from mesh.catalog import mesh_services, retryable_methods
from mesh.envoy_config import PER_TRY_TIMEOUT_S, RETRY_ON_IDEMPOTENT, RETRY_ON_UNSAFE
from mesh.timing import HEDGE_AFTER_S
from mesh.topology import AUTH, SERVICES

LISTEN = ("127.0.0.1", 10000)


def ep(port: int, zone: str = "z1") -> Endpoint:
    return Endpoint("auth", "127.0.0.1", port, zone, (("instance", f"auth-{port}"),))


def test_every_service_gets_an_eds_cluster_and_an_assignment_even_without_instances() -> None:
    snap = build_snapshot({}, listen=LISTEN)
    names = [s.name for s in SERVICES]
    assert list(snap.resources[rs.CLUSTER]) == sorted(names)
    for cluster in snap.resources[rs.CLUSTER].values():
        assert cluster.type == cluster_pb2.Cluster.EDS  # type: ignore[attr-defined]
        assert cluster.ignore_health_on_host_removal  # type: ignore[attr-defined]
        assert cluster.health_checks[0].grpc_health_check.service_name  # type: ignore[attr-defined]
        assert cluster.outlier_detection.consecutive_gateway_failure.value == 2  # type: ignore[attr-defined]
    assert list(snap.resources[rs.ENDPOINT]) == sorted(names)
    assert list(snap.resources[rs.LISTENER]) == ["grpc_ingress"]
    assert list(snap.resources[rs.ROUTE]) == ["grpc_routes"]


def test_endpoints_are_grouped_by_zone_with_metadata() -> None:
    snap = build_snapshot({"auth": [ep(2, "z2"), ep(1, "z1")]}, listen=LISTEN)
    cla = snap.resources[rs.ENDPOINT]["auth"]
    zones = [
        (g.locality.zone, [e.endpoint.address.socket_address.port_value for e in g.lb_endpoints])
        for g in cla.endpoints  # type: ignore[attr-defined]
    ]
    assert zones == [("z1", [1]), ("z2", [2])]
    meta = cla.endpoints[0].lb_endpoints[0].metadata.filter_metadata["capsule-mesh"]  # type: ignore[attr-defined]
    assert meta["instance"] == "auth-1"


def test_an_endpoint_change_changes_the_eds_version_only() -> None:
    one = build_snapshot({"auth": [ep(1)]}, listen=LISTEN)
    two = build_snapshot({"auth": [ep(1), ep(2)]}, listen=LISTEN)
    again = build_snapshot({"auth": [ep(1)]}, listen=LISTEN)
    assert one.versions == again.versions  # deterministic: a restarted control plane agrees
    changed = {t for t in rs.PUSH_ORDER if one.version(t) != two.version(t)}
    assert changed == {rs.ENDPOINT}  # no listener push (no GOAWAY storm) for an endpoint change


def test_idempotent_methods_get_broad_retries_and_the_rest_narrow_ones() -> None:
    snap = build_snapshot({}, listen=LISTEN, services=(AUTH,))
    routes = snap.resources[rs.ROUTE]["grpc_routes"].virtual_hosts[0].routes  # type: ignore[attr-defined]
    by_match = {(r.match.path or r.match.prefix): r.route.retry_policy.retry_on for r in routes}
    assert by_match["/capsule.auth.v1.AuthService/GetMe"] == RETRY_ON_IDEMPOTENT
    assert by_match["/capsule.auth.v1.AuthService/SearchUsers"] == RETRY_ON_IDEMPOTENT
    assert by_match["/capsule.auth.v1."] == RETRY_ON_UNSAFE
    # Exact routes come before the prefix that would otherwise swallow them.
    assert routes[-1].match.prefix in AUTH.route_prefixes
    assert "unavailable" not in RETRY_ON_UNSAFE and "reset" not in RETRY_ON_UNSAFE


def test_idempotent_unary_calls_are_hedged_and_writes_never() -> None:
    snap = build_snapshot({}, listen=LISTEN, services=(AUTH,))
    routes = snap.resources[rs.ROUTE]["grpc_routes"].virtual_hosts[0].routes  # type: ignore[attr-defined]
    by_match = {(r.match.path or r.match.prefix): r.route for r in routes}
    read = by_match["/capsule.auth.v1.AuthService/GetMe"]
    assert read.hedge_policy.hedge_on_per_try_timeout
    assert read.retry_policy.per_try_timeout.ToTimedelta().total_seconds() == HEDGE_AFTER_S
    write = by_match["/capsule.auth.v1."]
    assert not write.HasField("hedge_policy")
    assert write.retry_policy.per_try_timeout.ToTimedelta().total_seconds() == PER_TRY_TIMEOUT_S


def test_every_method_declared_idempotent_is_unary() -> None:
    """Hedging sends a second try of a call still unanswered: only sound for one request, one
    answer. A streaming method declared idempotent must be left out of hedging first."""
    streaming = [
        f"/{service.full_name}/{method.name}"
        for service in mesh_services()
        for method in service.methods
        if method.client_streaming or method.server_streaming
    ]
    assert not set(streaming) & retryable_methods()


def test_unknown_endpoint_names_get_an_empty_assignment() -> None:
    snap = build_snapshot({}, listen=LISTEN)
    (cla,) = snap.get(rs.ENDPOINT, ["nope"])
    assert cla.cluster_name == "nope" and not cla.endpoints  # type: ignore[attr-defined]
    assert snap.get(rs.ROUTE, ["nope"]) == []


def test_an_inconsistent_snapshot_is_refused() -> None:
    good = build_snapshot({}, listen=LISTEN)
    no_endpoints = Snapshot.of({t: list(good.resources[t].values()) for t in (rs.CLUSTER, rs.LISTENER, rs.ROUTE)})
    with pytest.raises(InconsistentSnapshot, match="endpoints"):
        check_consistent(no_endpoints)
    no_routes = Snapshot.of({t: list(good.resources[t].values()) for t in (rs.CLUSTER, rs.ENDPOINT, rs.LISTENER)})
    with pytest.raises(InconsistentSnapshot, match="routes"):
        check_consistent(no_routes)
    no_clusters = Snapshot.of({t: list(good.resources[t].values()) for t in (rs.ENDPOINT, rs.LISTENER, rs.ROUTE)})
    with pytest.raises(InconsistentSnapshot, match="unknown cluster"):
        check_consistent(no_clusters)


# --- an endpoint change rebuilds the endpoints only -----------------------------------------------

TOPOLOGY_BUILDERS = (
    (envoy_config, "build_cluster"),
    (envoy_config, "build_listener"),
    (envoy_config, "build_route_config"),
    (envoy_config, "build_route"),
    (proxyless, "build_resources"),
    (proxyless, "build_cluster"),
    (proxyless, "build_listener"),
    (proxyless, "build_route_config"),
)


def forbid_topology_builders(monkeypatch: pytest.MonkeyPatch) -> None:
    def rebuilt(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cluster, listener or route was built again for an endpoint change")

    for module, name in TOPOLOGY_BUILDERS:
        monkeypatch.setattr(module, name, rebuilt)


def assert_only_endpoints_moved(before: Snapshot, after: Snapshot) -> None:
    for type_url in TOPOLOGY_TYPES:
        assert after.version(type_url) == before.version(type_url)
        assert list(after.resources[type_url]) == list(before.resources[type_url])
        # The very same message objects: nothing was built (or hashed) again.
        assert all(after.resources[type_url][n] is m for n, m in before.resources[type_url].items())
    assert after.version(rs.ENDPOINT) != before.version(rs.ENDPOINT)


def test_an_endpoint_change_builds_the_assignments_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshots = MeshSnapshots(listen=LISTEN)
    envoy_one, grpc_one = snapshots.build({"auth": [ep(1)]})
    forbid_topology_builders(monkeypatch)
    envoy_two, grpc_two = snapshots.build({"auth": [ep(1), ep(2)]})
    assert_only_endpoints_moved(envoy_one, envoy_two)
    assert_only_endpoints_moved(grpc_one, grpc_two)
    # One set of assignments for both kinds of client, built once; and only for the service whose
    # endpoints changed.
    assert envoy_two.resources[rs.ENDPOINT]["auth"] is grpc_two.resources[rs.ENDPOINT]["auth"]
    assert envoy_two.resources[rs.ENDPOINT]["auth"] is not envoy_one.resources[rs.ENDPOINT]["auth"]
    assert envoy_two.resources[rs.ENDPOINT]["capsules"] is envoy_one.resources[rs.ENDPOINT]["capsules"]
    monkeypatch.undo()
    # The same versions as building everything afresh: the scheme did not change.
    assert envoy_two.versions == build_snapshot({"auth": [ep(1), ep(2)]}, listen=LISTEN).versions
    assert grpc_two.versions == build_proxyless_snapshot({"auth": [ep(1), ep(2)]}).versions


def test_the_control_plane_publishes_an_endpoint_change_without_rebuilding(monkeypatch: pytest.MonkeyPatch) -> None:
    plane = ControlPlane(ControlPlaneSettings(warmup_seconds=0))
    plane.ready = True  # as after the warm-up; nothing is served, only the registry → cache path runs
    plane.registry.register("auth", "127.0.0.1", 1)
    envoy_one, grpc_one = plane.cache.default, plane.cache.default_for(PROXYLESS)
    assert envoy_one is not None and grpc_one is not None
    forbid_topology_builders(monkeypatch)
    plane.registry.register("auth", "127.0.0.1", 2)
    envoy_two, grpc_two = plane.cache.default, plane.cache.default_for(PROXYLESS)
    assert envoy_two is not None and grpc_two is not None
    assert_only_endpoints_moved(envoy_one, envoy_two)
    assert_only_endpoints_moved(grpc_one, grpc_two)
    ports = [
        e.endpoint.address.socket_address.port_value
        for e in envoy_two.resources[rs.ENDPOINT]["auth"].endpoints[0].lb_endpoints
    ]  # type: ignore[attr-defined]
    assert ports == [1, 2]


def test_assignments_missing_a_cluster_are_refused() -> None:
    topology = MeshSnapshots(listen=LISTEN, services=(AUTH,)).envoy
    with pytest.raises(InconsistentSnapshot, match="auth"):
        topology.snapshot(build_assignments({}, ()))


def test_the_rebuild_benchmark_runs(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import xds_rebuild

    monkeypatch.setattr(sys, "argv", ["xds_rebuild", "--instances", "30", "--rounds", "2"])
    xds_rebuild.main()  # exits if the two ways built different snapshots
    out = capsys.readouterr().out
    assert "30 instances in the registry" in out and "EDS only (assignments)" in out
