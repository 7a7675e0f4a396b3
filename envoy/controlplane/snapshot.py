"""Snapshot builder: registry state + topology → consistent, versioned sets of xDS resources, one
for Envoy and one for proxyless gRPC clients such as the gateway (resources from proxyless.py). Both
carry the same endpoint assignments.

Pure, no I/O. Envoy's resources are the typed messages of mesh/envoy_config.py, the builders the
static bootstrap uses (every value there carries its reason); this module switches them to dynamic
discovery (EDS clusters, an RDS listener), adds the endpoints from the registry, and versions the
result.

Two lifetimes. Clusters, listeners and route configurations depend on the topology only (the
services and which of their methods are idempotent): `TopologyResources` builds, versions and
checks them once. ClusterLoadAssignments depend on the registry: `build_assignments` makes them on
every endpoint change, and `TopologyResources.snapshot(assignments)` publishes them next to the
very same cluster, listener and route objects. `MeshSnapshots` holds both kinds of topology
resources for the control plane; `build_snapshot` / `build_proxyless_snapshot` build everything
at once (one-off snapshots, tests).

A third lifetime under mutual TLS: Envoy's SDS secrets (its certificate and the mesh CA), which
change when the control plane renews the certificate (envoy_identity.py). `MeshSnapshots` keeps
the current ones as `Secrets` and puts them next to the very same topology resources and
assignments: a renewal is an SDS push and nothing else. A listener or cluster whose TLS context
names a secret the snapshot lacks would warm forever in Envoy, so such a snapshot is refused.
Proxyless clients speak plain text to the services (for now) and get no secrets.

Versions are per resource type: the SHA-256 of the deterministic serialization of that type's
resources, sorted by name. An endpoint change therefore changes the EDS version only — no
listener push, no GOAWAY to every connection (envoy#35085) — and a control plane restarted with
the same state computes the same versions Envoy already has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf.message import Message

from controlplane import proxyless
from controlplane import resources as rs
from controlplane.registry import Endpoint
from mesh import envoy_config
from mesh.topology import SERVICES, ServiceSpec

Address = tuple[str, int]
METADATA_NAMESPACE = "capsule-mesh"
# The resource types that follow the topology; ENDPOINT follows the registry.
TOPOLOGY_TYPES: tuple[str, ...] = (rs.CLUSTER, rs.LISTENER, rs.ROUTE)


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
            if items or type_url not in rs.OPTIONAL_TYPES:
                versions[type_url] = version_of(resources[type_url].values())
        return cls(resources, versions)

    def version(self, type_url: str) -> str:
        """The type's version; "" for an optional type the snapshot does not carry (secrets in a
        plain-text or proxyless snapshot): such a request gets an empty answer."""
        return self.versions.get(type_url, "")

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
    route configuration, every route points at an existing cluster (go-control-plane's
    Snapshot.Consistent checks the same), and every SDS secret a listener or cluster names is in
    the snapshot."""
    clusters = snapshot.resources.get(rs.CLUSTER, {})
    endpoints = snapshot.resources.get(rs.ENDPOINT, {})
    routes = snapshot.resources.get(rs.ROUTE, {})
    secrets = snapshot.resources.get(rs.SECRET, {})
    problems: list[str] = []
    for kind, items in (("cluster", clusters), ("listener", snapshot.resources.get(rs.LISTENER, {}))):
        for name, resource in items.items():
            for secret in sorted(envoy_config.sds_secret_names(resource) - secrets.keys()):
                problems.append(f"{kind} {name!r} uses secret {secret!r}, which the snapshot lacks")
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


# --- endpoints: rebuilt on every change of the registry ------------------------------------------


def load_assignment(spec: ServiceSpec, endpoints: Sequence[Endpoint]) -> endpoint_pb2.ClusterLoadAssignment:
    """EDS resource of one service: endpoints grouped by zone (Envoy locality), each carrying the
    instance's metadata (visible in /clusters and usable by subset load balancing later).

    Filled in place (`add()`, field by field) rather than through nested constructors: this runs
    for every endpoint on every change of the registry, and is several times faster so."""
    by_zone: dict[str, list[Endpoint]] = {}
    for ep in endpoints:
        by_zone.setdefault(ep.zone, []).append(ep)
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=spec.name)
    for zone, eps in sorted(by_zone.items()):
        group = assignment.endpoints.add()
        for ep in sorted(eps, key=Endpoint.sort_key):
            lb_endpoint = group.lb_endpoints.add()
            address = lb_endpoint.endpoint.address.socket_address
            address.address = ep.host
            address.port_value = ep.port
            metadata = lb_endpoint.metadata.filter_metadata[METADATA_NAMESPACE]  # present even when empty
            for key, value in ep.metadata:
                metadata.fields[key].string_value = value
        # gRPC's xDS client skips a locality without a weight ("contains no localities") and picks a
        # locality by weight before round robin inside it: the instance count keeps the share per
        # instance even. Envoy ignores locality weights unless its cluster asks for
        # locality-weighted balancing (ours do not).
        group.load_balancing_weight.value = len(eps)
        # Always present (empty without a zone): gRPC rejects a group without a locality.
        group.locality.SetInParent()
        group.locality.zone = zone
    return assignment


@dataclass(frozen=True)
class Assignments:
    """The ClusterLoadAssignments of one registry state (cluster name → assignment, sorted) and
    their version: one set shared by the Envoy and the proxyless snapshot."""

    resources: Mapping[str, Message]
    version: str

    @classmethod
    def of(cls, by_name: Mapping[str, Message]) -> Assignments:
        resources = MappingProxyType(dict(sorted(by_name.items())))
        return cls(resources, version_of(resources.values()))


def build_assignments(endpoints: Mapping[str, Sequence[Endpoint]], services: Sequence[ServiceSpec]) -> Assignments:
    """One assignment per service of the topology, empty while nothing registered; registrations
    for services outside the topology are ignored (not routable anyway)."""
    return Assignments.of({spec.name: load_assignment(spec, endpoints.get(spec.name, ())) for spec in services})


# --- clusters, listeners, routes: built once per topology ---------------------------------------------


@dataclass(frozen=True)
class Secrets:
    """Envoy's SDS secrets (name → Secret) and their version: replaced on every renewal of its
    certificate, independently of the topology and the endpoints."""

    resources: Mapping[str, Message]
    version: str

    @classmethod
    def of(cls, secrets: Iterable[Message]) -> Secrets:
        resources = MappingProxyType(dict(sorted((rs.name_of(s), s) for s in secrets)))
        return cls(resources, version_of(resources.values()))


NO_SECRETS = Secrets.of(())


@dataclass(frozen=True)
class TopologyResources:
    """Clusters, listeners and route configurations of one topology, versioned and checked once.
    Every snapshot made from it shares these very message objects and versions (never mutate
    them): an endpoint change builds and hashes the assignments only."""

    resources: Mapping[str, Mapping[str, Message]]
    versions: Mapping[str, str]
    # The assignment names the clusters use: all an endpoint change could leave dangling.
    eds_names: frozenset[str]
    # The SDS secrets the clusters and listeners name: what every snapshot's secrets must cover.
    sds_names: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        services: Sequence[ServiceSpec],
        *,
        clusters: Iterable[Message],
        listeners: Iterable[Message],
        routes: Iterable[Message],
    ) -> TopologyResources:
        """Versions the resources and checks, once, everything that does not depend on the
        endpoints or the secrets (every route names a cluster, every listener a route
        configuration); raises InconsistentSnapshot otherwise. Which secrets they name is
        recorded: `snapshot()` checks each set of secrets against it."""
        clusters, listeners = list(clusters), list(listeners)
        sds_names = frozenset(n for r in [*clusters, *listeners] for n in envoy_config.sds_secret_names(r))
        full = Snapshot.of(
            {
                rs.CLUSTER: clusters,
                rs.LISTENER: listeners,
                rs.ROUTE: routes,
                rs.ENDPOINT: _empty(services),
                rs.SECRET: [secret_pb2.Secret(name=name) for name in sds_names],  # stand-ins for the check
            }
        )
        check_consistent(full)
        eds_names = frozenset(
            cluster.eds_cluster_config.service_name or name  # type: ignore[attr-defined]
            for name, cluster in full.resources[rs.CLUSTER].items()
            if cluster.type == cluster.EDS  # type: ignore[attr-defined]
        )
        return cls(
            resources=MappingProxyType({t: MappingProxyType(dict(full.resources[t])) for t in TOPOLOGY_TYPES}),
            versions=MappingProxyType({t: full.version(t) for t in TOPOLOGY_TYPES}),
            eds_names=eds_names,
            sds_names=sds_names,
        )

    def snapshot(self, assignments: Assignments, secrets: Secrets = NO_SECRETS) -> Snapshot:
        """The topology's resources with these endpoints and secrets (no other resource is built
        or hashed)."""
        missing = self.eds_names - assignments.resources.keys()
        if missing:
            raise InconsistentSnapshot(f"clusters use endpoints {sorted(missing)}, which the assignments lack")
        missing = self.sds_names - secrets.resources.keys()
        if missing:
            raise InconsistentSnapshot(f"listeners or clusters use secrets {sorted(missing)}, which the snapshot lacks")
        resources = {**self.resources, rs.ENDPOINT: assignments.resources, rs.SECRET: secrets.resources}
        versions = {**self.versions, rs.ENDPOINT: assignments.version}
        if secrets.resources:
            versions[rs.SECRET] = secrets.version
        return Snapshot(
            {t: resources[t] for t in rs.PUSH_ORDER}, {t: versions[t] for t in rs.PUSH_ORDER if t in versions}
        )


def _empty(services: Sequence[ServiceSpec]) -> list[Message]:
    return [endpoint_pb2.ClusterLoadAssignment(cluster_name=spec.name) for spec in services]


def envoy_resources(
    *,
    listen: Address,
    services: Sequence[ServiceSpec] = SERVICES,
    idempotent_methods: frozenset[str] | None = None,
    tls: bool = False,
    otlp_endpoint: str = "",
) -> TopologyResources:
    """Envoy's clusters (EDS), its gRPC listener (RDS) and the routes, for `services`; with tls,
    mutual TLS on both sides and RBAC on the listener (their secrets come with each snapshot);
    with otlp_endpoint, the listener's spans exported there (a static cluster of its own)."""
    if idempotent_methods is None:
        idempotent_methods = envoy_config.idempotent_methods()
    clusters = [envoy_config.build_cluster(spec, (), "EDS", tls=tls) for spec in services]
    if otlp_endpoint:
        clusters.append(envoy_config.build_otlp_cluster(otlp_endpoint))
    listener = envoy_config.build_listener(
        listen, envoy_config.ROUTE_CONFIG_NAME, tls=tls, tracing=bool(otlp_endpoint)
    )
    return TopologyResources.of(
        services,
        clusters=clusters,
        listeners=[listener],
        routes=[envoy_config.build_route_config(services, idempotent_methods, envoy_config.ROUTE_CONFIG_NAME)],
    )


def proxyless_resources(
    *, services: Sequence[ServiceSpec] = SERVICES, idempotent_methods: frozenset[str] | None = None
) -> TopologyResources:
    """What gRPC's own xDS client gets (proxyless.py): one api_listener and route configuration per
    gRPC package, one cluster per service; the endpoints are the very assignments Envoy gets."""
    if idempotent_methods is None:
        idempotent_methods = envoy_config.idempotent_methods()
    listeners, routes, clusters = proxyless.build_resources(services, idempotent_methods)
    return TopologyResources.of(services, clusters=clusters, listeners=listeners, routes=routes)


class MeshSnapshots:
    """The control plane's builder. The topology (services, idempotent methods) is fixed for its
    lifetime, so both kinds of topology resources are built here, once; `build` turns a registry
    state into the Envoy and the proxyless snapshot by building the assignments once for both —
    and only those of services whose endpoints changed since the last call (one, for a
    registration): the others are the previous assignment objects. Same input, same snapshots
    (versions included) as building everything afresh; nothing here does I/O.

    tls: Envoy's listener and clusters speak mutual TLS; every Envoy snapshot then carries the
    secrets last given to `use_envoy_identity` (building one before is refused: Envoy would wait
    for them forever)."""

    def __init__(
        self,
        *,
        listen: Address,
        services: Sequence[ServiceSpec] = SERVICES,
        idempotent_methods: frozenset[str] | None = None,
        tls: bool = False,
        otlp_endpoint: str = "",
    ) -> None:
        if idempotent_methods is None:
            idempotent_methods = envoy_config.idempotent_methods()
        self.services = tuple(services)
        self.tls = tls
        self.secrets = NO_SECRETS
        self.envoy = envoy_resources(
            listen=listen,
            services=services,
            idempotent_methods=idempotent_methods,
            tls=tls,
            otlp_endpoint=otlp_endpoint,
        )
        self.proxyless = proxyless_resources(services=services, idempotent_methods=idempotent_methods)
        # Service name → (the endpoints its last assignment was built from, that assignment).
        self._last: dict[str, tuple[tuple[Endpoint, ...], Message]] = {}

    def use_envoy_identity(self, *, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> None:
        """Envoy's certificate (and the CA) for the snapshots built from now on."""
        if not self.tls:
            raise ValueError("a plain-text mesh has no use for Envoy's certificate")
        self.secrets = Secrets.of(envoy_config.build_tls_secrets(key_pem=key_pem, cert_pem=cert_pem, ca_pem=ca_pem))

    def build(self, endpoints: Mapping[str, Sequence[Endpoint]]) -> tuple[Snapshot, Snapshot]:
        """(Envoy's snapshot, the proxyless clients' snapshot) for this registry state."""
        assignments = self.assignments(endpoints)
        return self.envoy.snapshot(assignments, self.secrets), self.proxyless.snapshot(assignments)

    def assignments(self, endpoints: Mapping[str, Sequence[Endpoint]]) -> Assignments:
        by_name: dict[str, Message] = {}
        for spec in self.services:
            current = tuple(endpoints.get(spec.name, ()))
            last = self._last.get(spec.name)
            if last is None or last[0] != current:
                last = self._last[spec.name] = (current, load_assignment(spec, current))
            by_name[spec.name] = last[1]
        return Assignments.of(by_name)


def build_snapshot(
    endpoints: Mapping[str, Sequence[Endpoint]],
    *,
    listen: Address,
    services: Sequence[ServiceSpec] = SERVICES,
    idempotent_methods: frozenset[str] | None = None,
) -> Snapshot:
    """Envoy's whole snapshot, every resource built afresh: clusters (EDS), endpoints, the gRPC
    listener (RDS) and its routes for `services`. Every service of the topology gets a cluster and
    an assignment, empty while nothing registered."""
    topology = envoy_resources(listen=listen, services=services, idempotent_methods=idempotent_methods)
    return topology.snapshot(build_assignments(endpoints, services))


def build_proxyless_snapshot(
    endpoints: Mapping[str, Sequence[Endpoint]],
    *,
    services: Sequence[ServiceSpec] = SERVICES,
    idempotent_methods: frozenset[str] | None = None,
) -> Snapshot:
    """The proxyless clients' whole snapshot, every resource built afresh: the same
    ClusterLoadAssignments as Envoy's, so an endpoint change moves both snapshots' EDS versions
    together, and nothing else."""
    topology = proxyless_resources(services=services, idempotent_methods=idempotent_methods)
    return topology.snapshot(build_assignments(endpoints, services))
