"""xDS v3 resource types: type URLs, the push order, dict → message conversion.

mesh/envoy_config.py builds resources as protobuf-JSON dicts (the static bootstrap's
format). `from_dict` turns one into the typed message the ADS stream sends, resolving every
`@type` of the typed_config fields — which is why the extension modules are imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Extension messages referenced by "@type" in the builders' dicts (registered on import).
import envoy.extensions.access_loggers.stream.v3.stream_pb2
import envoy.extensions.filters.http.router.v3.router_pb2
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2
import envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

# Order of pushes when several types change (go-control-plane #59): clusters before the endpoints
# they use, listeners before the routes they name — nothing ever points at something missing.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

# Types whose requests name the resources wanted (SotW answers those); the others are wildcard:
# every response carries the full set.
NAMED_TYPES = frozenset({ENDPOINT, ROUTE})

MESSAGES: Mapping[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
}

SHORT_NAMES: Mapping[str, str] = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds"}


def from_dict(type_url: str, data: Mapping[str, Any]) -> Message:
    """A resource dict (protobuf JSON mapping) as its typed message; unknown fields are errors."""
    return json_format.ParseDict(dict(data), MESSAGES[type_url]())


def name_of(resource: Message) -> str:
    if isinstance(resource, endpoint_pb2.ClusterLoadAssignment):
        return str(resource.cluster_name)
    return str(resource.name)  # type: ignore[attr-defined]


def empty_load_assignment(cluster_name: str) -> endpoint_pb2.ClusterLoadAssignment:
    """The answer for an endpoints request naming a cluster we have nothing for: an explicit empty
    set, so Envoy finishes warming the cluster instead of waiting forever (java-control-plane #127,
    go-control-plane #583)."""
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
