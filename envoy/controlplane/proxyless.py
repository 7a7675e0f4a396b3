"""Resources for proxyless gRPC clients: what gRPC's own xDS client (C-core, in grpcio) reads.

A gRPC channel to `xds:///<name>` asks the control plane for the Listener `<name>`, follows it to a
RouteConfiguration, the routes to Clusters and the clusters to ClusterLoadAssignments, then balances
over the endpoints itself: no Envoy hop. The gateway uses this (gateway/xds.py); Envoy keeps serving
everyone else. The resources differ from Envoy's (mesh/envoy_config.py) because gRPC implements
only part of xDS (grpc/grpc doc/grpc_xds_features.md, gRFCs A27, A28, A31, A32, A44, A50):

- an `api_listener` (no address, no filter chain) whose HttpConnectionManager names the routes;
- load balancing: ROUND_ROBIN. LEAST_REQUEST (A48) is Java-only; C-core NACKs a cluster with it;
- no active health checks (the cluster field is ignored): a killed instance's connection fails and
  round robin skips it at once; a draining one leaves the endpoint set (Deregister waits for this
  client's ACK like Envoy's);
- outlier detection (A50): only the success-rate and failure-percentage algorithms, not the
  consecutive_* counters Envoy's clusters use;
- retries (A44): only retry_on (cancelled, deadline-exceeded, internal, resource-exhausted,
  unavailable), num_retries and retry_back_off — no per_try_timeout, no retry budget, no host
  predicate. Calls that never reached the server are retried transparently by gRPC itself (A6),
  policy or not: the equivalent of Envoy's connect-failure/refused-stream;
- timeouts (A31): only max_stream_duration (overall, retries included); no per-try timeout;
- circuit breaking (A32): only max_requests.

A field gRPC does not know is ignored silently; a known field with a value it does not support gets
the whole response NACKed (recorded on the control plane's /nacks).

Names: one Listener per gRPC package a service serves (`capsule.auth.v1` for `/capsule.auth.v1.`),
so a client derives its target from the method's package alone (`xds:///capsule.auth.v1`). Each
listener has its own RouteConfiguration of the same name; clusters and endpoint assignments are
named after the service (`auth`), the same ClusterLoadAssignments Envoy gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mesh import envoy_config
from mesh.topology import ServiceSpec

# The node.cluster a proxyless client puts in its bootstrap (gateway/xds.py writes it): the control
# plane serves such nodes these resources instead of Envoy's.
NODE_CLUSTER = "capsule-mesh-proxyless"

# Overall limit of one call, retries included (A31: gRPC applies it when shorter than the caller's
# deadline). The same bound Envoy's routes have; the gateway's own deadline (10 s) is shorter.
MAX_STREAM_DURATION_S = envoy_config.ROUTE_TIMEOUT_S
# Same count as Envoy's routes: two more tries on another instance.
NUM_RETRIES = envoy_config.NUM_RETRIES
# Idempotent methods retry on UNAVAILABLE: what a dying, draining or unreachable instance answers
# (a stream reset by a SIGKILL surfaces as UNAVAILABLE too). Envoy's "reset,connect-failure,
# refused-stream" have no gRPC spelling: connection failures are never picked (round robin skips a
# subchannel that is not READY) and refused streams are retried transparently.
RETRY_ON_IDEMPOTENT = "unavailable"

# Outlier detection (A50). Failure percentage is the only algorithm usable with 2 instances (success
# rate needs a statistical population; its minimum_hosts default is 5).
OUTLIER_INTERVAL_S = 1.0
OUTLIER_BASE_EJECTION_S = 5.0
# gRPC counts every non-OK status as a failure, application errors (NOT_FOUND, UNAUTHENTICATED...)
# included — unlike Envoy's 5xx counters. A high threshold keeps ordinary error answers from
# ejecting a healthy instance; an instance failing nearly everything (its database gone) is ejected.
FAILURE_PERCENTAGE_THRESHOLD = 95
# Calls per interval before a host is judged: a few failures of a quiet host prove nothing.
FAILURE_PERCENTAGE_REQUEST_VOLUME = 20


def _duration(seconds: float) -> str:
    """Protobuf JSON Duration ("1s", "0.025s")."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def listener_name(prefix: str) -> str:
    """`/capsule.auth.v1.` → `capsule.auth.v1` (the xds target's name and the listener's)."""
    return prefix.strip("/").rstrip(".")


def target_for_method(method: str) -> str:
    """The xds target serving a full method path `/capsule.auth.v1.AuthService/GetMe`."""
    service = method.strip("/").split("/", 1)[0]
    return f"xds:///{service.rpartition('.')[0]}"


def build_listener(name: str) -> dict[str, Any]:
    """An api_listener: gRPC reads only the HttpConnectionManager in it (A27)."""
    return {
        "name": name,
        "api_listener": {
            "api_listener": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                # Routes over RDS on the same ADS stream: a route change never touches the listener.
                "rds": {"route_config_name": name, "config_source": {"ads": {}, "resource_api_version": "V3"}},
                # gRPC requires the router as the last HTTP filter (A39); it has no settings.
                "http_filters": [
                    {
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                    }
                ],
            }
        },
    }


def _route(spec: ServiceSpec, match: dict[str, Any], *, retry: bool) -> dict[str, Any]:
    action: dict[str, Any] = {
        "cluster": spec.name,
        # The whole call's bound (A31); gRPC ignores Envoy's `timeout` field.
        "max_stream_duration": {"max_stream_duration": _duration(MAX_STREAM_DURATION_S)},
    }
    if retry:
        action["retry_policy"] = {
            "retry_on": RETRY_ON_IDEMPOTENT,
            "num_retries": NUM_RETRIES,
            # Envoy's values: 25 ms base, capped at 250 ms, so a retry lands after the failing
            # instance's connection state (or the endpoint update) had a chance to change.
            "retry_back_off": {
                "base_interval": _duration(0.025),
                "max_interval": _duration(0.25),
            },
        }
    # No retry_policy: writes are only retried transparently, i.e. when gRPC knows they never
    # reached the server (A6) — Envoy's RETRY_ON_UNSAFE.
    return {"name": f"{spec.name}:{match.get('path') or match.get('prefix')}", "match": match, "route": action}


def build_route_config(spec: ServiceSpec, prefix: str, idempotent_methods: frozenset[str]) -> dict[str, Any]:
    """The routes behind one listener: every idempotent method of the prefix by exact path first
    (retried on UNAVAILABLE), then the prefix (no retry policy)."""
    exact = sorted(m for m in idempotent_methods if m.startswith(prefix))
    routes = [_route(spec, {"path": m}, retry=True) for m in exact]
    routes.append(_route(spec, {"prefix": prefix}, retry=False))
    return {
        "name": listener_name(prefix),
        "virtual_hosts": [
            # gRPC matches the channel's authority (the target's name) against domains; "*" keeps
            # the routes independent of how the client spells its target.
            {"name": listener_name(prefix), "domains": ["*"], "routes": routes}
        ],
    }


def build_cluster(spec: ServiceSpec) -> dict[str, Any]:
    return {
        # Same name as Envoy's cluster and as the ClusterLoadAssignment both receive.
        "name": spec.name,
        # Endpoints from the control plane on the same ADS stream (A27 requires ads or self).
        "type": "EDS",
        "eds_cluster_config": {"service_name": spec.name, "eds_config": {"ads": {}, "resource_api_version": "V3"}},
        # The only per-call balancing C-core supports besides ring hash and WRR (see module doc).
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": {
            "thresholds": [
                # Envoy's value: above 1024 calls in flight to the service, fail fast with
                # UNAVAILABLE instead of queueing in Python instances (A32: only max_requests).
                {"priority": "DEFAULT", "max_requests": 1024}
            ]
        },
        "outlier_detection": {
            # Sweep every second; an ejection ends after 5 s times the number of past ejections.
            "interval": _duration(OUTLIER_INTERVAL_S),
            "base_ejection_time": _duration(OUTLIER_BASE_EJECTION_S),
            # Never eject more than half the hosts (as Envoy's clusters).
            "max_ejection_percent": 50,
            # Success rate off: with 2-3 instances its statistics say nothing (and A50 turns it on
            # whenever outlier_detection is present unless this is 0).
            "enforcing_success_rate": 0,
            "failure_percentage_threshold": FAILURE_PERCENTAGE_THRESHOLD,
            "enforcing_failure_percentage": 100,
            # Judge even a 2-instance service (default 5 would disable the algorithm here).
            "failure_percentage_minimum_hosts": 2,
            "failure_percentage_request_volume": FAILURE_PERCENTAGE_REQUEST_VOLUME,
        },
    }


def build_resources(
    services: Sequence[ServiceSpec], idempotent_methods: frozenset[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(listeners, route configurations, clusters) for every service of the topology."""
    listeners: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for spec in services:
        for prefix in spec.route_prefixes:
            listeners.append(build_listener(listener_name(prefix)))
            routes.append(build_route_config(spec, prefix, idempotent_methods))
    return listeners, routes, [build_cluster(spec) for spec in services]
