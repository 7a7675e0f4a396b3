"""What proxyless gRPC clients (the gateway) are served, and how the cache/ADS tell them from Envoy:
pure builders and hand-fed streams, no network."""

from __future__ import annotations

import asyncio

from controlplane import proxyless
from controlplane import resources as rs
from controlplane.ads import Stream
from controlplane.cache import PROXYLESS, SnapshotCache
from controlplane.registry import Endpoint
from controlplane.snapshot import build_proxyless_snapshot, build_snapshot
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import discovery_pb2

from mesh.topology import AUTH, SERVICES

LISTEN = ("127.0.0.1", 10000)
GETME = "/capsule.auth.v1.AuthService/GetMe"


def eps(*ports: int) -> dict[str, list[Endpoint]]:
    return {"auth": [Endpoint("auth", "127.0.0.1", p) for p in ports]}


def test_one_api_listener_and_route_configuration_per_package_and_a_round_robin_cluster_per_service() -> None:
    snap = build_proxyless_snapshot(eps(1))
    packages = sorted(proxyless.listener_name(p) for s in SERVICES for p in s.route_prefixes)
    assert "capsule.auth.v1" in packages
    assert list(snap.resources[rs.LISTENER]) == packages
    assert list(snap.resources[rs.ROUTE]) == packages
    listener = snap.resources[rs.LISTENER]["capsule.auth.v1"]
    assert not listener.HasField("address") and not listener.filter_chains  # type: ignore[attr-defined]
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener.api_listener.api_listener.Unpack(hcm)  # type: ignore[attr-defined]
    assert hcm.rds.route_config_name == "capsule.auth.v1"
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]
    for cluster in snap.resources[rs.CLUSTER].values():
        assert cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN  # type: ignore[attr-defined]
        assert cluster.type == cluster_pb2.Cluster.EDS  # type: ignore[attr-defined]
        assert cluster.eds_cluster_config.eds_config.HasField("ads")  # type: ignore[attr-defined]
        # Only the algorithms gRPC implements (A50): failure percentage on, success rate off.
        od = cluster.outlier_detection  # type: ignore[attr-defined]
        assert od.enforcing_failure_percentage.value == 100 and od.failure_percentage_minimum_hosts.value == 2
        assert od.HasField("enforcing_success_rate") and od.enforcing_success_rate.value == 0
        assert not cluster.health_checks  # type: ignore[attr-defined]


def test_reads_retry_on_unavailable_and_writes_only_transparently() -> None:
    snap = build_proxyless_snapshot(eps(1), services=(AUTH,), idempotent_methods=frozenset({GETME}))
    routes = snap.resources[rs.ROUTE]["capsule.auth.v1"].virtual_hosts[0].routes  # type: ignore[attr-defined]
    getme, rest = routes
    assert getme.match.path == GETME
    assert getme.route.retry_policy.retry_on == "unavailable"
    assert getme.route.retry_policy.num_retries.value == 2
    # Every other method (UpdateMe...) falls to the prefix route: no retry policy at all.
    assert rest.match.prefix == "/capsule.auth.v1." and not rest.route.HasField("retry_policy")
    for route in routes:
        assert route.route.cluster == "auth"
        assert route.route.max_stream_duration.max_stream_duration.seconds == 15
        assert not route.route.HasField("timeout")  # gRPC ignores it: max_stream_duration is the bound


def test_the_proxyless_snapshot_shares_envoys_endpoints_and_only_eds_moves_with_them() -> None:
    envoy = build_snapshot(eps(1, 2), listen=LISTEN)
    grpc_one = build_proxyless_snapshot(eps(1, 2))
    grpc_two = build_proxyless_snapshot(eps(1, 3))
    assert grpc_one.version(rs.ENDPOINT) == envoy.version(rs.ENDPOINT)
    assignment = grpc_one.resources[rs.ENDPOINT]["auth"]
    assert assignment == envoy.resources[rs.ENDPOINT]["auth"]
    # gRPC needs a locality and a weight on every group.
    assert assignment.endpoints[0].HasField("locality")  # type: ignore[attr-defined]
    assert assignment.endpoints[0].load_balancing_weight.value == 2  # type: ignore[attr-defined]
    changed = {t for t in rs.PUSH_ORDER if grpc_one.version(t) != grpc_two.version(t)}
    assert changed == {rs.ENDPOINT}
    assert build_proxyless_snapshot(eps(1, 2)).versions == grpc_one.versions  # deterministic


def test_targets_and_listener_names_agree() -> None:
    assert proxyless.target_for_method(GETME) == "xds:///capsule.auth.v1"
    assert proxyless.listener_name("/capsule.auth.v1.") == "capsule.auth.v1"
    from gateway import xds
    from gateway.settings import Settings

    assert xds.NODE_CLUSTER == proxyless.NODE_CLUSTER
    settings = Settings(xds_server="127.0.0.1:18000")
    assert settings.upstream_for("capsule.auth.v1.AuthService") == proxyless.target_for_method(GETME)
    assert Settings().upstream_for("capsule.auth.v1.AuthService") == "127.0.0.1:10000"  # Envoy fallback


# --- cache and stream -------------------------------------------------------------------------------


def proxyless_request(
    type_url: str, names: tuple[str, ...], *, node: str = "gw-1", version: str = "", nonce: str = ""
) -> discovery_pb2.DiscoveryRequest:
    request = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=version, response_nonce=nonce)
    request.resource_names.extend(names)
    request.node.id = node
    request.node.cluster = proxyless.NODE_CLUSTER
    return request


def ack_eds(stream: Stream, response: discovery_pb2.DiscoveryResponse) -> None:
    stream.on_request(proxyless_request(rs.ENDPOINT, ("auth",), version=response.version_info, nonce=response.nonce))


def published(*ports: int) -> SnapshotCache:
    cache = SnapshotCache()
    cache.set_snapshot(build_snapshot(eps(*ports), listen=LISTEN))
    cache.set_snapshot(build_proxyless_snapshot(eps(*ports)), kind=PROXYLESS)
    return cache


def test_a_proxyless_node_gets_its_kind_of_snapshot_and_only_the_names_it_asked_for() -> None:
    cache = published(1)
    stream = Stream(cache, 1)
    (listeners,) = stream.on_request(proxyless_request(rs.LISTENER, ("capsule.auth.v1",)))
    assert len(listeners.resources) == 1
    assert listeners.version_info == cache.default_for(PROXYLESS).version(rs.LISTENER)  # type: ignore[union-attr]
    (clusters,) = stream.on_request(proxyless_request(rs.CLUSTER, ("auth",)))
    assert len(clusters.resources) == 1
    assert cache.kinds["gw-1"] == PROXYLESS
    # An Envoy's wildcard request still gets every cluster of Envoy's snapshot.
    envoy = Stream(cache, 2)
    request = discovery_pb2.DiscoveryRequest(type_url=rs.CLUSTER)
    request.node.id = "envoy-1"
    (all_clusters,) = envoy.on_request(request)
    assert len(all_clusters.resources) == len(SERVICES)
    assert all_clusters.version_info == cache.default.version(rs.CLUSTER)  # type: ignore[union-attr]


def test_in_sync_waits_for_every_stream_of_a_node_that_watches_endpoints() -> None:
    """A gRPC process opens one ADS stream per channel target under one node id: the drain
    (Deregister → wait_in_sync) must hear an ACK on each of them, not the first one only."""
    cache = published(1, 2)
    streams = [Stream(cache, i) for i in (1, 2)]
    sent = [s.on_request(proxyless_request(rs.ENDPOINT, ("auth",)))[0] for s in streams]
    for stream, response in zip(streams, sent, strict=True):
        ack_eds(stream, response)
    assert cache.in_sync(rs.ENDPOINT)
    # Instance 2 deregisters: new snapshots, pushed to both streams; only the first one ACKs.
    cache.set_snapshot(build_proxyless_snapshot(eps(1)), kind=PROXYLESS)
    cache.set_snapshot(build_snapshot(eps(1), listen=LISTEN))
    pushed = [s.on_snapshot()[0] for s in streams]
    ack_eds(streams[0], pushed[0])
    assert cache.acked["gw-1"][rs.ENDPOINT] == pushed[0].version_info
    assert not cache.in_sync(rs.ENDPOINT)
    assert not asyncio.run(cache.wait_in_sync(rs.ENDPOINT, 0.05))
    ack_eds(streams[1], pushed[1])
    assert cache.in_sync(rs.ENDPOINT)
    # A closed stream no longer counts.
    cache.set_snapshot(build_proxyless_snapshot(eps(3)), kind=PROXYLESS)
    streams[1].close()
    assert not cache.in_sync(rs.ENDPOINT)  # stream 1 still owes its ACK
    streams[0].close()
    assert cache.in_sync(rs.ENDPOINT)
