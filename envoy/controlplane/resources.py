"""xDS v3 resource types: type URLs, the push order, names.

The resources themselves are typed messages built by mesh/envoy_config.py (Envoy's) and
proxyless.py (gRPC clients'); the ADS stream packs them into its responses as they are.

Secrets (SDS: Envoy's certificate and the mesh CA) are optional: only a mutual-TLS Envoy asks for
them, so a snapshot versions them only when it carries some — a plain-text Envoy or a proxyless
client that never asks is in sync without them.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf.message import Message

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# Order of pushes when several types change (go-control-plane #59): secrets before the clusters
# and listeners whose TLS contexts name them, clusters before the endpoints they use, listeners
# before the routes they name — nothing ever points at something missing.
PUSH_ORDER: tuple[str, ...] = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
# Types a snapshot versions only when it has resources of them (see the module doc).
OPTIONAL_TYPES = frozenset({SECRET})

# Types whose requests name the resources wanted (SotW answers those); the others are wildcard:
# every response carries the full set.
NAMED_TYPES = frozenset({ENDPOINT, ROUTE, SECRET})

MESSAGES: Mapping[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    SECRET: secret_pb2.Secret,
}

SHORT_NAMES: Mapping[str, str] = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds", SECRET: "sds"}


def name_of(resource: Message) -> str:
    if isinstance(resource, endpoint_pb2.ClusterLoadAssignment):
        return str(resource.cluster_name)
    return str(resource.name)  # type: ignore[attr-defined]


def empty_load_assignment(cluster_name: str) -> endpoint_pb2.ClusterLoadAssignment:
    """The answer for an endpoints request naming a cluster we have nothing for: an explicit empty
    set, so Envoy finishes warming the cluster instead of waiting forever (java-control-plane #127,
    go-control-plane #583)."""
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
