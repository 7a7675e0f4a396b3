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

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from mesh import envoy_config
from mesh.envoy_config import ads_source, duration, typed, uint32
from mesh.topology import ServiceSpec

Cluster = cluster_pb2.Cluster
Listener = listener_pb2.Listener
RouteConfiguration = route_pb2.RouteConfiguration

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


def listener_name(prefix: str) -> str:
    """`/capsule.auth.v1.` → `capsule.auth.v1` (the xds target's name and the listener's)."""
    return prefix.strip("/").rstrip(".")


def target_for_method(method: str) -> str:
    """The xds target serving a full method path `/capsule.auth.v1.AuthService/GetMe`."""
    service = method.strip("/").split("/", 1)[0]
    return f"xds:///{service.rpartition('.')[0]}"


def build_listener(name: str) -> Listener:
    """An api_listener: gRPC reads only the HttpConnectionManager in it (A27)."""
    hcm = hcm_pb2.HttpConnectionManager(
        # Routes over RDS on the same ADS stream: a route change never touches the listener.
        rds=hcm_pb2.Rds(route_config_name=name, config_source=ads_source()),
        # gRPC requires the router as the last HTTP filter (A39); it has no settings.
        http_filters=[envoy_config.router_filter()],
    )
    return Listener(name=name, api_listener=api_listener_pb2.ApiListener(api_listener=typed(hcm)))


def _route(spec: ServiceSpec, match: route_components_pb2.RouteMatch, *, retry: bool) -> route_components_pb2.Route:
    action = route_components_pb2.RouteAction(
        cluster=spec.name,
        # The whole call's bound (A31); gRPC ignores Envoy's `timeout` field.
        max_stream_duration=route_components_pb2.RouteAction.MaxStreamDuration(
            max_stream_duration=duration(MAX_STREAM_DURATION_S)
        ),
    )
    if retry:
        action.retry_policy.CopyFrom(
            route_components_pb2.RetryPolicy(
                retry_on=RETRY_ON_IDEMPOTENT,
                num_retries=uint32(NUM_RETRIES),
                # Envoy's values: 25 ms base, capped at 250 ms, so a retry lands after the failing
                # instance's connection state (or the endpoint update) had a chance to change.
                retry_back_off=route_components_pb2.RetryPolicy.RetryBackOff(
                    base_interval=duration(0.025), max_interval=duration(0.25)
                ),
            )
        )
    # No retry_policy: writes are only retried transparently, i.e. when gRPC knows they never
    # reached the server (A6) — Envoy's RETRY_ON_UNSAFE.
    return route_components_pb2.Route(name=f"{spec.name}:{match.path or match.prefix}", match=match, route=action)


def build_route_config(spec: ServiceSpec, prefix: str, idempotent_methods: frozenset[str]) -> RouteConfiguration:
    """The routes behind one listener: every idempotent method of the prefix by exact path first
    (retried on UNAVAILABLE), then the prefix (no retry policy)."""
    exact = sorted(m for m in idempotent_methods if m.startswith(prefix))
    routes = [_route(spec, route_components_pb2.RouteMatch(path=m), retry=True) for m in exact]
    routes.append(_route(spec, route_components_pb2.RouteMatch(prefix=prefix), retry=False))
    return RouteConfiguration(
        name=listener_name(prefix),
        virtual_hosts=[
            # gRPC matches the channel's authority (the target's name) against domains; "*" keeps
            # the routes independent of how the client spells its target.
            route_components_pb2.VirtualHost(name=listener_name(prefix), domains=["*"], routes=routes)
        ],
    )


def build_cluster(spec: ServiceSpec) -> Cluster:
    return Cluster(
        # Same name as Envoy's cluster and as the ClusterLoadAssignment both receive.
        name=spec.name,
        # Endpoints from the control plane on the same ADS stream (A27 requires ads or self).
        type=Cluster.EDS,
        eds_cluster_config=Cluster.EdsClusterConfig(service_name=spec.name, eds_config=ads_source()),
        # The only per-call balancing C-core supports besides ring hash and WRR (see module doc).
        lb_policy=Cluster.ROUND_ROBIN,
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                # Envoy's value: above 1024 calls in flight to the service, fail fast with
                # UNAVAILABLE instead of queueing in Python instances (A32: only max_requests).
                circuit_breaker_pb2.CircuitBreakers.Thresholds(priority=base_pb2.DEFAULT, max_requests=uint32(1024))
            ]
        ),
        outlier_detection=outlier_detection_pb2.OutlierDetection(
            # Sweep every second; an ejection ends after 5 s times the number of past ejections.
            interval=duration(OUTLIER_INTERVAL_S),
            base_ejection_time=duration(OUTLIER_BASE_EJECTION_S),
            # Never eject more than half the hosts (as Envoy's clusters).
            max_ejection_percent=uint32(50),
            # Success rate off: with 2-3 instances its statistics say nothing (and A50 turns it on
            # whenever outlier_detection is present unless this is 0).
            enforcing_success_rate=uint32(0),
            failure_percentage_threshold=uint32(FAILURE_PERCENTAGE_THRESHOLD),
            enforcing_failure_percentage=uint32(100),
            # Judge even a 2-instance service (default 5 would disable the algorithm here).
            failure_percentage_minimum_hosts=uint32(2),
            failure_percentage_request_volume=uint32(FAILURE_PERCENTAGE_REQUEST_VOLUME),
        ),
    )


def build_resources(
    services: Sequence[ServiceSpec], idempotent_methods: frozenset[str]
) -> tuple[list[Listener], list[RouteConfiguration], list[Cluster]]:
    """(listeners, route configurations, clusters) for every service of the topology."""
    listeners: list[Listener] = []
    routes: list[RouteConfiguration] = []
    for spec in services:
        for prefix in spec.route_prefixes:
            listeners.append(build_listener(listener_name(prefix)))
            routes.append(build_route_config(spec, prefix, idempotent_methods))
    return listeners, routes, [build_cluster(spec) for spec in services]
