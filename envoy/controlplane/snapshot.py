"""Snapshot builder: registry state + topology → consistent, versioned sets of xDS resources, one
for Envoy (`build_snapshot`) and one for proxyless gRPC clients such as the gateway
(`build_proxyless_snapshot`, resources from proxyless.py). Both carry the same endpoint assignments.

Pure functions, no I/O. Envoy's resources come from mesh/envoy_config.py, the builders the
static bootstrap used (every value there carries its reason); this module only switches them to
dynamic discovery (EDS clusters, an RDS listener), adds the endpoints from the registry, and
versions the result.

Versions are per resource type: the SHA-256 of the deterministic serialization of that type's
resources, sorted by name. An endpoint change therefore changes the EDS version only — no
listener push, no GOAWAY to every connection (envoy#35085) — and a control plane restarted with
the same state computes the same versions Envoy already has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from controlplane import proxyless
from controlplane import resources as rs
from controlplane.registry import Endpoint
from mesh import envoy_config
from mesh.topology import SERVICES, ServiceSpec

Address = tuple[str, int]
METADATA_NAMESPACE = "capsule-mesh"


class InconsistentSnapshot(ValueError):
    """A snapshot referencing resources it does not contain (never published)."""


@dataclass(frozen=True)
class Snapshot:
    """Resources per type URL (name → message) and their versions."""

    resources: Mapping[str, Mapping[str, Message]]
    versions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, by_type: Mapping[str, Iterable[Message]]) -> Snapshot:
        resources: dict[str, dict[str, Message]] = {}
        versions: dict[str, str] = {}
        for type_url in rs.PUSH_ORDER:
            items = {rs.name_of(r): r for r in by_type.get(type_url, ())}
            resources[type_url] = dict(sorted(items.items()))
            versions[type_url] = version_of(resources[type_url].values())
        return cls(resources, versions)

    def version(self, type_url: str) -> str:
        return self.versions[type_url]

    def get(self, type_url: str, names: Iterable[str] | None = None) -> list[Message]:
        """The resources of a type; `names` selects (always for EDS/RDS; for CDS/LDS when given:
        gRPC clients subscribe by name, Envoy's wildcard request gives none), and an endpoints name
        we do not have is answered with an empty assignment (rule 5)."""
        have = self.resources.get(type_url, {})
        if names is None or (type_url not in rs.NAMED_TYPES and not names):
            return list(have.values())
        out: list[Message] = []
        for name in sorted(set(names)):
            if name in have:
                out.append(have[name])
            elif type_url == rs.ENDPOINT:
                out.append(rs.empty_load_assignment(name))
        return out


def version_of(resources: Iterable[Message]) -> str:
    digest = hashlib.sha256()
    for resource in resources:
        data = resource.SerializeToString(deterministic=True)
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:16]


def check_consistent(snapshot: Snapshot) -> None:
    """Every EDS name used by a cluster has an assignment, every RDS name used by a listener has a
    route configuration, and every route points at an existing cluster (go-control-plane's
    Snapshot.Consistent checks the same)."""
    clusters = snapshot.resources.get(rs.CLUSTER, {})
    endpoints = snapshot.resources.get(rs.ENDPOINT, {})
    routes = snapshot.resources.get(rs.ROUTE, {})
    problems: list[str] = []
    for name, cluster in clusters.items():
        if cluster.type == cluster.EDS:  # type: ignore[attr-defined]
            eds_name = cluster.eds_cluster_config.service_name or name  # type: ignore[attr-defined]
            if eds_name not in endpoints:
                problems.append(f"cluster {name!r} uses endpoints {eds_name!r}, which the snapshot lacks")
    for name, listener in snapshot.resources.get(rs.LISTENER, {}).items():
        for route_name in _rds_names(listener):
            if route_name not in routes:
                problems.append(f"listener {name!r} uses routes {route_name!r}, which the snapshot lacks")
    for name, route_config in routes.items():
        for vhost in route_config.virtual_hosts:  # type: ignore[attr-defined]
            for route in vhost.routes:
                target = route.route.cluster
                if target and target not in clusters:
                    problems.append(f"route {name!r}/{route.name!r} points at unknown cluster {target!r}")
    if problems:
        raise InconsistentSnapshot("; ".join(problems))


def _rds_names(listener: Message) -> list[str]:
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    names = []
    configs = [f.typed_config for chain in listener.filter_chains for f in chain.filters]  # type: ignore[attr-defined]
    if listener.HasField("api_listener"):  # a proxyless gRPC client's listener
        configs.append(listener.api_listener.api_listener)  # type: ignore[attr-defined]
    for config in configs:
        hcm = hcm_pb2.HttpConnectionManager()
        if config.Unpack(hcm) and hcm.HasField("rds"):
            names.append(hcm.rds.route_config_name)
    return names


# --- the mesh's snapshot --------------------------------------------------------------------------


def load_assignment(spec: ServiceSpec, endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """EDS resource of one service: endpoints grouped by zone (Envoy locality), each carrying the
    instance's metadata (visible in /clusters and usable by subset load balancing later)."""
    by_zone: dict[str, list[Endpoint]] = {}
    for ep in endpoints:
        by_zone.setdefault(ep.zone, []).append(ep)
    groups = []
    for zone, eps in sorted(by_zone.items()):
        group: dict[str, Any] = {
            "lb_endpoints": [
                {
                    "endpoint": {"address": {"socket_address": {"address": ep.host, "port_value": ep.port}}},
                    "metadata": {"filter_metadata": {METADATA_NAMESPACE: dict(ep.metadata)}},
                }
                for ep in sorted(eps)
            ],
            # gRPC's xDS client skips a locality without a weight ("contains no localities") and
            # picks a locality by weight before round robin inside it: the instance count keeps
            # the share per instance even. Envoy ignores locality weights unless its cluster asks
            # for locality-weighted balancing (ours do not).
            "load_balancing_weight": len(eps),
            # Always present (empty without a zone): gRPC rejects a group without a locality.
            "locality": {"zone": zone} if zone else {},
        }
        groups.append(group)
    return {"cluster_name": spec.name, "endpoints": groups}


def build_snapshot(
    endpoints: Mapping[str, Sequence[Endpoint]],
    *,
    listen: Address,
    services: Sequence[ServiceSpec] = SERVICES,
    idempotent_methods: frozenset[str] | None = None,
) -> Snapshot:
    """Clusters (EDS), endpoints, the gRPC listener (RDS) and its routes for `services`. Every
    service of the topology gets a cluster and an assignment, empty while nothing registered;
    registrations for services outside the topology are ignored (not routable anyway)."""
    clusters = [envoy_config.build_cluster(spec, (), "EDS") for spec in services]
    assignments = [load_assignment(spec, endpoints.get(spec.name, ())) for spec in services]
    if idempotent_methods is None:
        idempotent_methods = envoy_config.idempotent_methods()
    route_config = envoy_config.build_route_config(services, idempotent_methods)
    route_config["name"] = envoy_config.ROUTE_CONFIG_NAME
    listener = envoy_config.build_listener(listen, envoy_config.ROUTE_CONFIG_NAME)
    snapshot = Snapshot.of(
        {
            rs.CLUSTER: [rs.from_dict(rs.CLUSTER, c) for c in clusters],
            rs.ENDPOINT: [rs.from_dict(rs.ENDPOINT, a) for a in assignments],
            rs.LISTENER: [rs.from_dict(rs.LISTENER, listener)],
            rs.ROUTE: [rs.from_dict(rs.ROUTE, route_config)],
        }
    )
    check_consistent(snapshot)
    return snapshot


def build_proxyless_snapshot(
    endpoints: Mapping[str, Sequence[Endpoint]],
    *,
    services: Sequence[ServiceSpec] = SERVICES,
    idempotent_methods: frozenset[str] | None = None,
) -> Snapshot:
    """What gRPC's own xDS client gets (proxyless.py): one api_listener and route configuration per
    gRPC package, one cluster per service, and the very ClusterLoadAssignments Envoy gets — so an
    endpoint change moves both snapshots' EDS versions together, and nothing else."""
    if idempotent_methods is None:
        idempotent_methods = envoy_config.idempotent_methods()
    listeners, routes, clusters = proxyless.build_resources(services, idempotent_methods)
    assignments = [load_assignment(spec, endpoints.get(spec.name, ())) for spec in services]
    snapshot = Snapshot.of(
        {
            rs.CLUSTER: [rs.from_dict(rs.CLUSTER, c) for c in clusters],
            rs.ENDPOINT: [rs.from_dict(rs.ENDPOINT, a) for a in assignments],
            rs.LISTENER: [rs.from_dict(rs.LISTENER, listener) for listener in listeners],
            rs.ROUTE: [rs.from_dict(rs.ROUTE, r) for r in routes],
        }
    )
    check_consistent(snapshot)
    return snapshot
