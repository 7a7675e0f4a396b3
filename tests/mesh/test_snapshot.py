"""The snapshot builder: resources from the launcher's builders, per-type versions, consistency."""

from __future__ import annotations

import pytest
from controlplane import resources as rs
from controlplane.registry import Endpoint
from controlplane.snapshot import InconsistentSnapshot, Snapshot, build_snapshot, check_consistent
from envoy.config.cluster.v3 import cluster_pb2

from mesh.envoy_config import RETRY_ON_IDEMPOTENT, RETRY_ON_UNSAFE
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
