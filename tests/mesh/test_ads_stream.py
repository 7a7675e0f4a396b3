"""The ADS state machine (controlplane.ads.Stream) fed with hand-made requests: no network."""

from __future__ import annotations

from controlplane import resources as rs
from controlplane.ads import Stream
from controlplane.cache import SnapshotCache
from controlplane.registry import Endpoint
from controlplane.snapshot import Snapshot, build_snapshot
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

LISTEN = ("127.0.0.1", 10000)
NODE = "envoy-1"


def snap(*ports: int):  # type: ignore[no-untyped-def]
    return build_snapshot({"auth": [Endpoint("auth", "127.0.0.1", p) for p in ports]}, listen=LISTEN)


def req(type_url: str, *, version: str = "", nonce: str = "", names: tuple[str, ...] = (), error: str = "", node: str = NODE) -> discovery_pb2.DiscoveryRequest:  # noqa: E501
    r = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=version, response_nonce=nonce)
    r.resource_names.extend(names)
    r.node.id = node
    if error:
        r.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return r


def fresh() -> tuple[SnapshotCache, Stream]:
    cache = SnapshotCache()
    cache.set_snapshot(snap(1))
    return cache, Stream(cache, 1)


def ack(stream: Stream, response: discovery_pb2.DiscoveryResponse, names: tuple[str, ...] = ()) -> list[discovery_pb2.DiscoveryResponse]:  # noqa: E501
    return stream.on_request(req(response.type_url, version=response.version_info, nonce=response.nonce, names=names))


def test_first_request_is_answered_and_an_ack_holds_the_watch() -> None:
    cache, stream = fresh()
    (resp,) = stream.on_request(req(rs.CLUSTER))
    assert resp.version_info == cache.default.version(rs.CLUSTER)  # type: ignore[union-attr]
    assert len(resp.resources) == len(cache.default.resources[rs.CLUSTER])  # type: ignore[union-attr]
    assert ack(stream, resp) == []
    assert cache.acked[NODE][rs.CLUSTER] == resp.version_info
    assert cache.connected == {NODE: 1}


def test_a_new_version_is_pushed_on_the_open_watch_and_only_for_changed_types() -> None:
    cache, stream = fresh()
    for type_url, names in ((rs.CLUSTER, ()), (rs.ENDPOINT, ("auth",)), (rs.LISTENER, ()), (rs.ROUTE, ("grpc_routes",))):  # noqa: E501
        (resp,) = stream.on_request(req(type_url, names=names))
        assert ack(stream, resp, names) == []
    cache.set_snapshot(snap(1, 2))
    (push,) = stream.on_snapshot()
    assert push.type_url == rs.ENDPOINT
    cla = endpoint_pb2.ClusterLoadAssignment()
    push.resources[0].Unpack(cla)
    assert len(cla.endpoints[0].lb_endpoints) == 2
    # Before the ACK nothing more goes out, even if the snapshot changes again.
    cache.set_snapshot(snap(2))
    assert stream.on_snapshot() == []
    (again,) = ack(stream, push, ("auth",))
    assert again.version_info == cache.default.version(rs.ENDPOINT)  # type: ignore[union-attr]


def test_a_nack_is_recorded_and_the_same_version_is_not_resent() -> None:
    cache, stream = fresh()
    (resp,) = stream.on_request(req(rs.CLUSTER))
    assert ack(stream, resp) == []
    cache.set_snapshot(snap(1))  # same content: no push
    assert stream.on_snapshot() == []
    bad = resp.version_info
    cache.set_snapshot(snap(1, 2))  # EDS-only change; make CDS change too via a per-node snapshot:
    other = build_snapshot({}, listen=("127.0.0.1", 10001))
    cache.set_snapshot(other, node_id=NODE)
    pushes = stream.on_snapshot()
    assert [p.type_url for p in pushes] == []  # CDS content identical: nothing for clusters
    (lds,) = stream.on_request(req(rs.LISTENER))
    nack = stream.on_request(req(rs.LISTENER, version="", nonce=lds.nonce, error="bad listener"))
    assert nack == []  # not resent
    (record,) = cache.nacks
    assert record.rejected_version == lds.version_info and record.error == "bad listener"
    assert record.type_url == rs.LISTENER and record.node_id == NODE
    assert bad  # the clusters version stays acked
    assert cache.acked[NODE][rs.CLUSTER] == bad
    # A new version is sent again.
    cache.set_snapshot(build_snapshot({}, listen=("127.0.0.1", 10002)), node_id=NODE)
    (fixed,) = stream.on_snapshot()
    assert fixed.type_url == rs.LISTENER and fixed.version_info != lds.version_info


def test_stale_nonces_are_ignored() -> None:
    _, stream = fresh()
    (first,) = stream.on_request(req(rs.ENDPOINT, names=("auth",)))
    (second,) = stream.on_request(req(rs.ENDPOINT, names=("auth", "other")))  # names changed: answered
    assert stream.on_request(req(rs.ENDPOINT, version=first.version_info, nonce=first.nonce, names=("x",))) == []
    assert second.nonce != first.nonce


def test_endpoint_requests_for_unknown_names_get_an_empty_assignment() -> None:
    _, stream = fresh()
    (resp,) = stream.on_request(req(rs.ENDPOINT, names=("gone",)))
    cla = endpoint_pb2.ClusterLoadAssignment()
    resp.resources[0].Unpack(cla)
    assert cla.cluster_name == "gone" and not cla.endpoints


def test_endpoints_are_answered_after_a_clusters_push_even_if_unchanged() -> None:
    cache, stream = fresh()
    (cds,) = stream.on_request(req(rs.CLUSTER))
    ack(stream, cds)
    (eds,) = stream.on_request(req(rs.ENDPOINT, names=("auth",)))
    ack(stream, eds, ("auth",))
    # A clusters-only change (a tunable of one cluster), endpoints unchanged.
    old = cache.default
    assert old is not None
    clusters = [Cluster.FromString(c.SerializeToString()) for c in old.resources[rs.CLUSTER].values()]
    clusters[0].connect_timeout.FromMilliseconds(1500)
    same = {t: list(old.resources[t].values()) for t in rs.PUSH_ORDER}
    cache.set_snapshot(Snapshot.of({**same, rs.CLUSTER: clusters}))
    (cds2,) = stream.on_snapshot()
    assert cds2.type_url == rs.CLUSTER
    ack(stream, cds2)
    # Envoy re-requests the endpoints of re-created clusters with the same version and names: answer.
    (eds2,) = stream.on_request(req(rs.ENDPOINT, version=eds.version_info, nonce=eds.nonce, names=("auth",)))
    assert eds2.type_url == rs.ENDPOINT


def test_a_reconnecting_envoy_that_has_the_current_version_gets_nothing_new() -> None:
    cache, stream = fresh()
    current = cache.default.version(rs.LISTENER)  # type: ignore[union-attr]
    assert stream.on_request(req(rs.LISTENER, version=current)) == []
    assert cache.acked[NODE][rs.LISTENER] == current
    cache.set_snapshot(build_snapshot({}, listen=("127.0.0.1", 10009)))
    (push,) = stream.on_snapshot()
    assert push.version_info != current


def test_no_snapshot_yet_means_the_request_waits() -> None:
    cache = SnapshotCache()
    stream = Stream(cache, 7)
    assert stream.on_request(req(rs.CLUSTER)) == []
    cache.set_snapshot(snap(1))
    (resp,) = stream.on_snapshot()
    assert resp.type_url == rs.CLUSTER
    stream.close()
    assert cache.connected == {}
