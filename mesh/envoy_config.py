"""Envoy v3 configuration, built as typed messages (the envoy.config.* classes of xds-protos) from
the topology.

The builders are pure functions. The control plane serves their clusters, listeners and route
configurations as they are (envoy/controlplane/snapshot.py); `build_bootstrap()` (static: every
instance listed, CONTROL_PLANE=0) and `build_xds_bootstrap()` (only the control plane's address)
put them in a Bootstrap, which `write_bootstrap()` — the only function here that touches a file —
serialises to protobuf JSON (`to_json`) for Envoy's `-c`.

Mutual TLS (SPEC §12) is a switch on the builders (`tls=True`, `tls_dir=`), off by default so
that plain text remains available as the explicit development mode. Under it Envoy never holds a
key on disk for the data path: the listener and clusters name SDS secrets that the control plane
serves over the ADS stream (rotated without a restart, and without touching the listener or the
clusters, so no connection is drained); only the ADS connection itself, which must exist before any
SDS, reads its identity from files (filesystem SDS, watched). Who may call which method is not
written here: the RBAC policy is generated from the protos' declarations (mesh/catalog.py).

Every value set below carries its reason. Values left out are Envoy's defaults on purpose; a value
equal to the default (codec AUTO, panic threshold 0 %) is set anyway when the reason matters, even
though protobuf JSON then leaves it out of the file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    backoff_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    health_check_pb2,
    protocol_pb2,
    substitution_format_string_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.overload.v3 import overload_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.config.trace.v3 import http_tracer_pb2
from envoy.config.trace.v3 import opentelemetry_pb2 as otel_tracer_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.clusters.common.dns.v3 import dns_pb2
from envoy.extensions.clusters.dns.v3 import dns_cluster_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.request_id.uuid.v3 import uuid_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import downstream_connections_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import path_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, json_format, struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from mesh.pki import CA_NAME, CONTROL_PLANE, IDENTITY_NAME, SPIFFE_PREFIX, server_name, spiffe_id
from mesh.timing import HEDGE_AFTER_S, TIMING
from mesh.topology import SERVICES, ServiceSpec

Address = tuple[str, int]
Discovery = Literal["STATIC", "STRICT_DNS", "EDS"]
Cluster = cluster_pb2.Cluster

# --- tunables ------------------------------------------------------------------------------------

# Active health checks: interval, timeout and unhealthy threshold are mesh/timing.py's (services'
# drain delays depend on them). One good answer makes a (re)started instance eligible again: a
# fresh process is ready when it says SERVING, there is no reason to wait for a second round.
HEALTHY_THRESHOLD = 1

# Whole call, retries included (Envoy's route timeout covers every try). Long enough for the
# slowest legitimate call (argon2 hashing on a busy 2-core machine), short enough that a hung
# instance does not hold the caller for the default 15 s per retry.
ROUTE_TIMEOUT_S = 15.0
# One try. A try stuck on a wedged instance is abandoned and retried elsewhere; 3 tries fit in
# the route timeout.
PER_TRY_TIMEOUT_S = 5.0
# Idempotent unary calls are hedged after mesh/timing.py's HEDGE_AFTER_S: a try still unanswered
# is not abandoned, a second one goes to another instance and the first answer wins. Each such
# try counts as a gateway failure for outlier detection, which ejects the instance after
# `consecutive_gateway_failure` of them. Hedges spend the clusters' retry budget (20 %), so a mesh
# that is slow everywhere is not hammered with duplicates. Writes keep PER_TRY_TIMEOUT_S: never
# hedged. (A try's timer starts once its connection is up: handshakes are not covered.)
# The conditions under which a call is retried on another instance: see RETRY_ON_IDEMPOTENT and
# RETRY_ON_UNSAFE below (the same per-method policy for the static bootstrap and the control plane).
NUM_RETRIES = 2

# The control plane's routes distinguish idempotent RPCs (a repeat changes nothing) from the rest:
# - idempotent: also retried when the call may have reached the server (UNAVAILABLE from a dying
#   or draining instance, a stream reset by a SIGKILL): repeating a read is harmless;
# - everything else: only when the call provably never reached the application (the connection
#   was refused or the HTTP/2 stream was refused before any byte of it was processed). A write cut
#   mid-flight is not replayed behind the caller's back; the graceful drain order makes sure no
#   write is cut in the first place.
RETRY_ON_IDEMPOTENT = "unavailable,reset,connect-failure,refused-stream"
RETRY_ON_UNSAFE = "connect-failure,refused-stream"
# Server reflection only reads descriptors: safe to retry, though no proto of ours declares it.
ALWAYS_RETRYABLE = frozenset(
    {
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)

XDS_CLUSTER = "xds_cluster"
# The route configuration's name: inline in the static bootstrap, and shared by the listener (RDS
# reference) and the RDS resource under the control plane.
ROUTE_CONFIG_NAME = "grpc_routes"


def idempotent_methods() -> frozenset[str]:
    """Full method paths Envoy may retry after they reached a server: every method whose proto
    says `option idempotency_level = NO_SIDE_EFFECTS;` (or IDEMPOTENT), and reflection.
    Read from the generated descriptors, so the protos are the one place this is decided."""
    from mesh.catalog import retryable_methods

    return retryable_methods() | ALWAYS_RETRYABLE


# --- small typed values -----------------------------------------------------------------------------


def duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def uint32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def typed(message: Message) -> any_pb2.Any:
    """An extension's config as the Any of a typed_config field (deterministic bytes: resource
    versions hash them)."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


def ads_source() -> config_source_pb2.ConfigSource:
    """Resources over the ADS stream the node already has open (v3)."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def socket_address(address: Address) -> address_pb2.Address:
    host, port = address
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def _http2_upstream(keepalive_interval_s: float, keepalive_timeout_s: float) -> Mapping[str, any_pb2.Any]:
    """typed_extension_protocol_options of a gRPC upstream: HTTP/2 (h2c) with keep-alive PINGs."""
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
                connection_keepalive=protocol_pb2.KeepaliveSettings(
                    interval=duration(keepalive_interval_s), timeout=duration(keepalive_timeout_s)
                )
            )
        )
    )
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(options)}


# --- mutual TLS (SPEC §12) -------------------------------------------------------------------------

# The SDS secrets Envoy's listener and clusters name, both served by the control plane over the ADS
# stream (envoy/controlplane/envoy_identity.py): Envoy's own certificate and key, and the mesh CA
# that every peer's certificate must chain to. Rotating one is an SDS push: no listener or cluster
# changes, so no GOAWAY and no drained connection — new handshakes simply use the new secret.
IDENTITY_SECRET = "envoy-identity"
CA_SECRET = "mesh-ca"
TLS_SECRETS = (IDENTITY_SECRET, CA_SECRET)
# gRPC is HTTP/2 only; offering nothing else means a TLS peer that cannot speak it fails the
# handshake instead of a confusing HTTP/1.1 exchange.
ALPN_H2 = ("h2",)


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads_source())


def _tls_socket(context: Message) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=typed(context))


def _uri_san(workload: str) -> tls_common_pb2.SubjectAltNameMatcher:
    """Accept a peer only when its certificate names `workload` as its SPIFFE identity: a valid
    certificate of another workload (same CA) is not enough."""
    return tls_common_pb2.SubjectAltNameMatcher(
        san_type=tls_common_pb2.SubjectAltNameMatcher.URI, matcher=string_pb2.StringMatcher(exact=spiffe_id(workload))
    )


def downstream_tls() -> base_pb2.TransportSocket:
    """The listener's side: Envoy presents its own certificate and requires one from every client,
    signed by the mesh CA. Any mesh identity may connect; which one may call what is the RBAC
    filter's decision (rbac_filter), taken per path on the identity authenticated here."""
    return _tls_socket(
        tls_pb2.DownstreamTlsContext(
            # No certificate, no connection: the listener is internal and defended as if an
            # attacker could reach it (SPEC §12).
            require_client_certificate=wrappers_pb2.BoolValue(value=True),
            common_tls_context=tls_pb2.CommonTlsContext(
                tls_certificate_sds_secret_configs=[_sds(IDENTITY_SECRET)],
                validation_context_sds_secret_config=_sds(CA_SECRET),
                alpn_protocols=ALPN_H2,
            ),
        )
    )


def upstream_tls(spec: ServiceSpec) -> base_pb2.TransportSocket:
    """A cluster's side: Envoy presents its own certificate (the services require one) and talks
    only to an instance whose certificate names this very service — an instance of another service
    registered under this name (or a stolen address) fails the handshake, hence the health checks,
    and never gets a call."""
    return _tls_socket(
        tls_pb2.UpstreamTlsContext(
            # The DNS SAN every workload certificate carries (mesh/pki.py); the instances' address
            # is an IP, which names nothing.
            sni=server_name(spec.name),
            common_tls_context=tls_pb2.CommonTlsContext(
                tls_certificate_sds_secret_configs=[_sds(IDENTITY_SECRET)],
                # The CA over SDS (rotates with Envoy's certificate), combined with the fixed,
                # per-cluster requirement on the peer's identity.
                combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                    default_validation_context=tls_common_pb2.CertificateValidationContext(
                        match_typed_subject_alt_names=[_uri_san(spec.name)]
                    ),
                    validation_context_sds_secret_config=_sds(CA_SECRET),
                ),
                alpn_protocols=ALPN_H2,
            ),
        )
    )


def build_tls_secrets(*, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> list[secret_pb2.Secret]:
    """The SDS resources the TLS contexts above name: Envoy's certificate chain and key, and the mesh
    CA. Inline: they travel inside the ADS stream, which is itself mutual TLS (the bootstrap's
    xds_cluster), and Envoy keeps them in memory only."""
    return [
        secret_pb2.Secret(
            name=IDENTITY_SECRET,
            tls_certificate=tls_common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=cert_pem),
                private_key=base_pb2.DataSource(inline_bytes=key_pem),
            ),
        ),
        secret_pb2.Secret(
            name=CA_SECRET,
            validation_context=tls_common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=ca_pem)
            ),
        ),
    ]


def sds_secret_names(resource: Message) -> set[str]:
    """The SDS secrets a listener or a cluster names in its TLS contexts (what a snapshot must also
    carry, else Envoy keeps the resource warming forever)."""
    sockets: list[base_pb2.TransportSocket] = []
    if isinstance(resource, listener_pb2.Listener):
        sockets = [chain.transport_socket for chain in resource.filter_chains if chain.HasField("transport_socket")]
    elif isinstance(resource, Cluster) and resource.HasField("transport_socket"):
        sockets = [resource.transport_socket]
    names: set[str] = set()
    for socket in sockets:
        for context_type in (tls_pb2.DownstreamTlsContext, tls_pb2.UpstreamTlsContext):
            context = context_type()
            if socket.typed_config.Unpack(context):
                common = context.common_tls_context
                names.update(c.name for c in common.tls_certificate_sds_secret_configs)
                if common.HasField("validation_context_sds_secret_config"):
                    names.add(common.validation_context_sds_secret_config.name)
                combined = common.combined_validation_context
                if common.HasField("combined_validation_context"):
                    names.add(combined.validation_context_sds_secret_config.name)
    return names


# --- clusters (CDS + EDS resources under the control plane) ------------------------------------------


def build_load_assignment(spec: ServiceSpec, endpoints: Sequence[Address]) -> endpoint_pb2.ClusterLoadAssignment:
    """The endpoints of one cluster, listed in the cluster itself (static bootstrap)."""
    return load_assignment(spec.name, endpoints)


def load_assignment(cluster_name: str, endpoints: Sequence[Address]) -> endpoint_pb2.ClusterLoadAssignment:
    """`endpoints` as the load assignment of cluster `cluster_name` (one locality)."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(address=socket_address(a))
                    )
                    for a in endpoints
                ]
            )
        ],
    )


def build_cluster(
    spec: ServiceSpec, endpoints: Sequence[Address], discovery: Discovery = "STATIC", *, tls: bool = False
) -> Cluster:
    """tls: mutual TLS to the instances (upstream_tls), health checks included — they use the
    cluster's transport socket, so an instance that cannot prove it is `spec` is never healthy.
    False: plain-text h2c (the development switch)."""
    cluster = Cluster(
        # Cluster name = service name: what routes point at and what the admin /clusters shows.
        name=spec.name,
        # Local network: a connect that has not completed in 1 s is a host that is gone; fail it
        # and let the retry policy pick another instance instead of waiting Envoy's 5 s default.
        connect_timeout=duration(1.0),
        # Least request (power of two choices): calls differ a lot in cost (an argon2 sign-up vs
        # a cached GetMe), so counting in-flight requests balances better than round robin.
        lb_policy=Cluster.LEAST_REQUEST,
        common_lb_config=Cluster.CommonLbConfig(
            # No panic mode: Envoy's default (50 %) would, once half the hosts are unhealthy, send
            # traffic to all hosts including the dead ones. With 2 or 3 instances that is one kill
            # away. With 0 only healthy hosts get traffic; none healthy → fast UNAVAILABLE.
            healthy_panic_threshold=percent_pb2.Percent(value=0.0),
        ),
        # gRPC upstreams speak HTTP/2 only, and active gRPC health checks require HTTP/2 on the
        # cluster (envoy#34570). Explicit, not negotiated: in plain text there is no ALPN, and
        # under TLS h2 is the only protocol offered anyway (ALPN_H2). HTTP/2 PING every 10 s
        # on idle connections, dropped if unanswered for 3 s: a host that vanished without a FIN
        # (kill -9 of a VM, network partition) is detected without waiting for a call to time out.
        typed_extension_protocol_options=_http2_upstream(10.0, 3.0),
        health_checks=[
            health_check_pb2.HealthCheck(
                # A health check answer slower than this counts as a failure.
                timeout=duration(TIMING.health_check_timeout_seconds),
                # Check every second: a dead instance leaves rotation within ~2 s (SPEC §10); a
                # draining one within the services' drain delay (mesh/timing.py, relation 3).
                interval=duration(TIMING.health_check_interval_seconds),
                unhealthy_threshold=uint32(TIMING.unhealthy_threshold),
                healthy_threshold=uint32(HEALTHY_THRESHOLD),
                # Envoy's default is 60 s for clusters that have not had traffic yet: a fresh
                # stack (or a restarted instance) would wait up to a minute to be eligible.
                no_traffic_interval=duration(TIMING.health_check_interval_seconds),
                # The per-service status (not the overall ""), so a process that serves several
                # services can take one out of rotation; it must answer SERVING/NOT_SERVING,
                # never SERVICE_UNKNOWN (envoy#10825).
                grpc_health_check=health_check_pb2.HealthCheck.GrpcHealthCheck(service_name=spec.proto_service),
            )
        ],
        # Passive health: faster than the active checks for hard failures between two rounds.
        outlier_detection=outlier_detection_pb2.OutlierDetection(
            # Consecutive gateway failures (connect failure, reset, 502/503/504 — a killed
            # instance) eject after 2, instead of waiting for the next health check round.
            consecutive_gateway_failure=uint32(2),
            # Envoy's default is 0 % (count but never eject): enforce it.
            enforcing_consecutive_gateway_failure=uint32(100),
            # Any 5xx (gRPC INTERNAL/UNKNOWN/UNAVAILABLE... map to 5xx): Envoy's default of 5 in a
            # row; application errors such as NOT_FOUND or INVALID_ARGUMENT are 4xx and never count.
            consecutive_5xx=uint32(5),
            # Sweep every second so an ejection ends promptly once base_ejection_time is over.
            interval=duration(1.0),
            # Short ejection (default 30 s): an instance restarted on the same address is back in
            # seconds; the active health check still keeps it out while it is really down.
            base_ejection_time=duration(5.0),
            # A passed health check does not end an ejection early (Envoy's default does): a slow
            # or lossy instance answers its health checks in time, and was let back after ~1 s to
            # fail calls again — each time on a new connection, whose TCP and TLS handshakes over
            # the bad link no per-try timeout covers (tests/netns: reads of 0.5 s). An instance
            # that restarts registers anew and is a new host to Envoy, without the ejection.
            successful_active_health_check_uneject_host=wrappers_pb2.BoolValue(value=False),
            # Never eject more than half the hosts: outlier detection must not empty a cluster
            # that the active health checks still consider healthy.
            max_ejection_percent=uint32(50),
        ),
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    priority=base_pb2.DEFAULT,
                    # HTTP/2 multiplexes: a handful of connections per instance is normal.
                    max_connections=uint32(1024),
                    # Calls waiting for a connection to be set up; beyond it, fail fast.
                    max_pending_requests=uint32(1024),
                    # In-flight calls to the whole cluster. Above this, a Python instance would
                    # only queue (its DB pool is ~50 connections); answering UNAVAILABLE at once
                    # protects the instances and tells the gateway to back off.
                    max_requests=uint32(1024),
                    # Retries may add at most 20 % to the active requests, so a failing cluster is
                    # not hammered with retry storms. Replaces max_retries. At least 32 at once,
                    # whatever the volume: hedges are retries, and a connection that fails fails
                    # every call queued on it at the same instant, each needing its retry. With 3,
                    # then 10, calls caught on a slow or partitioned instance went without their
                    # hedge or retry at low volume (tests/netns: "UO" in Envoy's access log).
                    retry_budget=circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
                        budget_percent=percent_pb2.Percent(value=20.0),
                        min_retry_concurrency=uint32(32),
                    ),
                    # Publish remaining_* gauges: the benchmarks and tests read them.
                    track_remaining=True,
                )
            ]
        ),
    )
    if tls:
        cluster.transport_socket.CopyFrom(upstream_tls(spec))
    if discovery == "EDS":
        # Endpoints come from the control plane over the same ADS stream (one ClusterLoadAssignment
        # named after the cluster), not from the cluster resource itself.
        cluster.type = Cluster.EDS
        cluster.eds_cluster_config.CopyFrom(Cluster.EdsClusterConfig(service_name=spec.name, eds_config=ads_source()))
        # An endpoint the control plane removed (deregistered on SIGTERM, or its lease lapsed) leaves
        # the load balancer at once. Envoy's default keeps a removed host until it also fails its
        # health checks, which would add up to 3 s to every drain.
        cluster.ignore_health_on_host_removal = True
    elif discovery == "STRICT_DNS":
        # Compose scales replicas behind one name, each resolved IP being one host. Envoy 1.40
        # deprecates the Cluster-level DNS fields: the DNS cluster extension replaces `type`.
        dns = dns_cluster_pb2.DnsCluster(
            # Re-resolve every 5 s: a scaled-up replica gets traffic within seconds.
            dns_refresh_rate=duration(5.0),
            # IPv4 only: Docker's embedded DNS answers A records; AAAA lookups add latency.
            dns_lookup_family=dns_pb2.V4_ONLY,
            # Every address is its own host (health-checked and balanced separately).
            all_addresses_in_single_endpoint=False,
        )
        cluster.cluster_type.CopyFrom(Cluster.CustomClusterType(name="envoy.cluster.dns", typed_config=typed(dns)))
        cluster.load_assignment.CopyFrom(build_load_assignment(spec, endpoints))
    else:
        # STATIC: the launcher knows every instance address.
        cluster.type = Cluster.STATIC
        cluster.load_assignment.CopyFrom(build_load_assignment(spec, endpoints))
    return cluster


def build_clusters(
    endpoints: Mapping[str, Sequence[Address]],
    services: Sequence[ServiceSpec] = SERVICES,
    discovery: Discovery = "STATIC",
    *,
    tls: bool = False,
) -> list[Cluster]:
    """One cluster per service of the topology; a service without instances gets an empty one."""
    return [build_cluster(spec, endpoints.get(spec.name, ()), discovery, tls=tls) for spec in services]


# --- routes (RDS resource under the control plane) -----------------------------------------------


def build_route(
    spec: ServiceSpec,
    prefix: str,
    *,
    retry_on: str = RETRY_ON_UNSAFE,
    exact_path: bool = False,
    hedged: bool = False,
) -> route_components_pb2.Route:
    """A route for a path prefix (`/capsule.auth.v1.`) or, with exact_path, one method; `hedged`:
    a second try after HEDGE_AFTER_S (idempotent unary methods only)."""
    # gRPC paths are /package.Service/Method: the package prefix selects the service.
    # `grpc` (no options) only matches requests with content-type application/grpc.
    match = route_components_pb2.RouteMatch(grpc=route_components_pb2.RouteMatch.GrpcRouteMatchOptions())
    if exact_path:
        match.path = prefix
    else:
        match.prefix = prefix
    return route_components_pb2.Route(
        name=f"{spec.name}:{prefix}",
        match=match,
        route=route_components_pb2.RouteAction(
            cluster=spec.name,
            timeout=duration(ROUTE_TIMEOUT_S),
            # A caller's grpc-timeout (the gateway sets a deadline on every call) becomes the
            # limit instead, capped at the route timeout: Envoy never waits longer than the
            # caller does.
            max_stream_duration=route_components_pb2.RouteAction.MaxStreamDuration(
                grpc_timeout_header_max=duration(ROUTE_TIMEOUT_S)
            ),
            retry_policy=route_components_pb2.RetryPolicy(
                retry_on=retry_on,
                num_retries=uint32(NUM_RETRIES),
                per_try_timeout=duration(HEDGE_AFTER_S if hedged else PER_TRY_TIMEOUT_S),
                # 25 ms base (Envoy's default, written out), capped at 250 ms: a retry lands after
                # the outlier detector / health checker had a chance to act, without stalling.
                retry_back_off=route_components_pb2.RetryPolicy.RetryBackOff(
                    base_interval=duration(0.025), max_interval=duration(0.25)
                ),
                # Retry on a different instance than the ones already tried.
                retry_host_predicate=[
                    route_components_pb2.RetryPolicy.RetryHostPredicate(
                        name="envoy.retry_host_predicates.previous_hosts",
                        typed_config=typed(previous_hosts_pb2.PreviousHostsPredicate()),
                    )
                ],
                # How many times host selection may be redone to satisfy the predicate.
                host_selection_retry_max_attempts=3,
            ),
            hedge_policy=route_components_pb2.HedgePolicy(hedge_on_per_try_timeout=True) if hedged else None,
        ),
    )


def _service_routes(spec: ServiceSpec, retryable: frozenset[str]) -> list[route_components_pb2.Route]:
    # Exact method routes first (Envoy takes the first match), then the service's prefixes.
    exact = sorted(m for m in retryable if m.startswith(spec.route_prefixes))
    # Reflection is a stream (a try lasts as long as grpcurl talks): retried, never hedged. Every
    # method our protos declare idempotent is unary (tests/mesh/test_snapshot.py holds them to it).
    return [
        build_route(spec, m, retry_on=RETRY_ON_IDEMPOTENT, exact_path=True, hedged=m not in ALWAYS_RETRYABLE)
        for m in exact
    ] + [build_route(spec, p, retry_on=RETRY_ON_UNSAFE) for p in spec.route_prefixes]


def build_route_config(
    services: Sequence[ServiceSpec] = SERVICES,
    retryable: frozenset[str] | None = None,
    name: str = ROUTE_CONFIG_NAME,
) -> route_pb2.RouteConfiguration:
    """The mesh's routes: broad retries for the methods the protos declare idempotent (`retryable`,
    by default read from the protos), narrow ones for the rest — static bootstrap and control plane
    alike."""
    if retryable is None:
        retryable = idempotent_methods()
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name="mesh",
                # Callers use IPs and ports (127.0.0.1:10000, envoy:10000): match any authority.
                domains=["*"],
                # No catch-all: an unknown service gets Envoy's 404, which gRPC clients see as
                # UNIMPLEMENTED — the right answer for a method nobody serves.
                routes=[r for spec in services for r in _service_routes(spec, retryable)],
            )
        ],
    )


# --- tracing (OpenTelemetry, OTLP/gRPC) ----------------------------------------------------------

# The cluster Envoy's OpenTelemetry tracer exports to: the collector at OTEL_EXPORTER_OTLP_ENDPOINT.
OTEL_CLUSTER = "opentelemetry_collector"
# Envoy's name in the traces (resource service.name).
ENVOY_SERVICE_NAME = "envoy"


def otlp_address(endpoint: str) -> Address:
    """host and port of an OTLP/gRPC endpoint (http://host:port, or host:port; 4317 by default).
    Only plain text: an https:// endpoint is refused rather than sent spans in clear."""
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if parsed.scheme != "http" or not parsed.hostname:
        raise ValueError(f"OTEL_EXPORTER_OTLP_ENDPOINT must be http://host:port for Envoy, not {endpoint!r}")
    return parsed.hostname, parsed.port or 4317


def build_otlp_cluster(endpoint: str) -> Cluster:
    """The collector as a cluster of its own (static: one address; DNS: a name, as in compose)."""
    address = otlp_address(endpoint)
    cluster = Cluster(
        name=OTEL_CLUSTER,
        # A collector that does not accept in 1 s is down: spans are dropped, calls never wait.
        connect_timeout=duration(1.0),
        load_assignment=load_assignment(OTEL_CLUSTER, [address]),
        # OTLP/gRPC is HTTP/2 (h2c); PINGs notice a collector that vanished without a FIN.
        typed_extension_protocol_options=_http2_upstream(10.0, 3.0),
    )
    if _is_ip(address[0]):
        cluster.type = Cluster.STATIC
    else:
        # A name (compose): the DNS cluster extension, as for the services' clusters (Envoy 1.40
        # deprecates the Cluster-level DNS fields); IPv4, as Docker's embedded DNS answers.
        dns = dns_cluster_pb2.DnsCluster(dns_refresh_rate=duration(5.0), dns_lookup_family=dns_pb2.V4_ONLY)
        cluster.cluster_type.CopyFrom(Cluster.CustomClusterType(name="envoy.cluster.dns", typed_config=typed(dns)))
    return cluster


def sampling_percent(environ: Mapping[str, str] | None = None) -> float:
    """The share of calls Envoy starts a trace for when the caller sent no sampling decision (an
    operator's grpcurl): the ratio the Python processes sample at (OTEL_TRACES_SAMPLER and _ARG,
    read by the control plane, which builds this), so no entry into the mesh traces more."""
    env = os.environ if environ is None else environ
    sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler in ("always_off", "parentbased_always_off"):
        return 0.0
    if sampler in ("traceidratio", "parentbased_traceidratio"):
        try:
            ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            return 100.0  # as the SDK does with an unreadable ratio: its default, 1.0
        return min(max(ratio, 0.0), 1.0) * 100.0
    return 100.0


def tracing_config() -> hcm_pb2.HttpConnectionManager.Tracing:
    """Envoy's spans, exported over OTLP/gRPC to OTEL_CLUSTER. The W3C `traceparent` a caller sent
    is continued (its sampled flag decides, so the callers' OTEL_TRACES_SAMPLER is the one
    sampling decision of the whole trace), and Envoy passes on its own span as the parent."""
    otel = otel_tracer_pb2.OpenTelemetryConfig(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=OTEL_CLUSTER),
            # An export never waits longer on a slow collector.
            timeout=duration(1.0),
        ),
        service_name=ENVOY_SERVICE_NAME,
    )
    return hcm_pb2.HttpConnectionManager.Tracing(
        provider=http_tracer_pb2.Tracing.Http(name="envoy.tracers.opentelemetry", typed_config=typed(otel)),
        # Two spans per call: the caller's request as Envoy received it (SERVER) and each try to an
        # instance (CLIENT, one per retry), so a retried call shows where each attempt went.
        spawn_upstream_span=wrappers_pb2.BoolValue(value=True),
        # A request that comes with a traceparent keeps its caller's decision; one without starts
        # a trace at the services' ratio (sampling_percent).
        random_sampling=percent_pb2.Percent(value=sampling_percent()),
        client_sampling=percent_pb2.Percent(value=100.0),
        overall_sampling=percent_pb2.Percent(value=100.0),
    )


def _tracing_request_id() -> hcm_pb2.RequestIDExtension:
    # With tracing on, Envoy's UUID request-id extension would by default rewrite one character of
    # an x-request-id that is a UUID (to record the sampling decision in it), and sample by it: the
    # services would log another request id than the gateway. Neither, here.
    return hcm_pb2.RequestIDExtension(
        typed_config=typed(
            uuid_pb2.UuidRequestIdConfig(
                pack_trace_reason=wrappers_pb2.BoolValue(value=False),
                use_request_id_for_trace_sampling=wrappers_pb2.BoolValue(value=False),
            )
        )
    )


# --- listener (LDS resource under the control plane) ----------------------------------------------

_ACCESS_LOG_FORMAT = {
    "time": "%START_TIME%",
    "path": "%REQ(:PATH)%",
    "grpc_status": "%GRPC_STATUS(NUMBER)%",
    "http_status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "upstream": "%UPSTREAM_HOST%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "duration_ms": "%DURATION%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "traceparent": "%REQ(TRACEPARENT)%",
}


def router_filter() -> hcm_pb2.HttpFilter:
    """The router, last HTTP filter of every HttpConnectionManager; it needs no settings."""
    return hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=typed(router_pb2.Router()))


def _principal(workload: str) -> rbac_pb2.Principal:
    # The URI SAN of the certificate the client presented on this connection (Envoy reads the URI
    # SAN first, then the DNS SAN): the identity the TLS handshake proved, nothing the client says.
    return rbac_pb2.Principal(
        authenticated=rbac_pb2.Principal.Authenticated(
            principal_name=string_pb2.StringMatcher(exact=spiffe_id(workload))
        )
    )


def _path(matcher: string_pb2.StringMatcher) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=matcher))


def rbac_policies(
    callers: Mapping[str, frozenset[str]], open_prefixes: Sequence[str] = ()
) -> dict[str, rbac_pb2.Policy]:
    """ALLOW policies: each gRPC path to exactly the workloads in `callers` (path → workloads), one
    policy per distinct set of workloads (a few policies instead of one per method), and the
    `open_prefixes` to any identity of the mesh. A path with no workload is in no policy: denied."""
    by_callers: dict[frozenset[str], list[str]] = {}
    for path, workloads in callers.items():
        if workloads:
            by_callers.setdefault(frozenset(workloads), []).append(path)
    policies: dict[str, rbac_pb2.Policy] = {}
    for workloads, paths in by_callers.items():
        policies["callers:" + ",".join(sorted(workloads))] = rbac_pb2.Policy(
            # OR within each list: any of these paths, called by any of these workloads.
            permissions=[_path(string_pb2.StringMatcher(exact=p)) for p in sorted(paths)],
            principals=[_principal(w) for w in sorted(workloads)],
        )
    if open_prefixes:
        policies["open:any-mesh-identity"] = rbac_pb2.Policy(
            permissions=[_path(string_pb2.StringMatcher(prefix=p)) for p in open_prefixes],
            principals=[
                rbac_pb2.Principal(
                    authenticated=rbac_pb2.Principal.Authenticated(
                        principal_name=string_pb2.StringMatcher(prefix=SPIFFE_PREFIX)
                    )
                )
            ],
        )
    return policies


def rbac_filter(callers: Mapping[str, frozenset[str]] | None = None) -> hcm_pb2.HttpFilter:
    """Who may call what, enforced on the identity of the client's certificate (SPEC §12). By default
    the protos' declarations (mesh/catalog.py: public methods to the gateway and operators, internal
    ones to the workloads their `callers` option names) and the open prefixes (reflection, health).
    Anything no policy allows gets Envoy's 403, which a gRPC client sees as PERMISSION_DENIED; the
    call never reaches a service. Denials count in `rbac_stat(listener name, "denied")`."""
    from mesh.catalog import OPEN_PREFIXES, allowed_callers

    rules = rbac_pb2.RBAC(
        action=rbac_pb2.RBAC.ALLOW,
        policies=rbac_policies(allowed_callers() if callers is None else callers, OPEN_PREFIXES),
    )
    return hcm_pb2.HttpFilter(name="envoy.filters.http.rbac", typed_config=typed(rbac_filter_pb2.RBAC(rules=rules)))


def rbac_stat(listener_name: str, outcome: Literal["allowed", "denied"]) -> str:
    """The counter of the RBAC filter's decisions on a listener (its HCM's stat_prefix is the
    listener's name): `/stats?filter=` reads it."""
    return f"http.{listener_name}.rbac.{outcome}"


def build_listener(
    address: Address,
    route_config: route_pb2.RouteConfiguration | str,
    name: str = "grpc_ingress",
    *,
    tls: bool = False,
    tracing: bool = False,
) -> listener_pb2.Listener:
    """route_config: the routes inline (static bootstrap), or the name of a RouteConfiguration
    fetched over ADS (RDS: routes change without touching the listener, hence without GOAWAY).

    tls: mutual TLS (downstream_tls), the caller's identity passed on to the services in
    x-forwarded-client-cert, and RBAC per path on that identity. False: plain text, every caller
    trusted (the development switch).

    tracing: Envoy's spans (tracing_config), exported to OTEL_CLUSTER, which must exist
    (build_otlp_cluster)."""
    log_format = struct_pb2.Struct()
    log_format.update(_ACCESS_LOG_FORMAT)
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        # AUTO: HTTP/2 from gRPC clients (negotiated by ALPN under TLS, prior knowledge in plain
        # text), and HTTP/1.1 for anything else (plain-text curl gets a readable 404, not a reset).
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
            # Bounds one downstream connection's fan-in; a gateway instance uses few connections.
            max_concurrent_streams=uint32(1024),
            # Envoy's edge guidance (64 KiB stream / 1 MiB connection windows) instead of 256 MiB:
            # bodies are ≤ 256 KiB and memory per connection stays bounded.
            initial_stream_window_size=uint32(65536),
            initial_connection_window_size=uint32(1048576),
        ),
        # One JSON line per call on stdout (the launcher writes it to .run/logs/envoy.log):
        # path, gRPC status, upstream instance, attempts, request id and trace context.
        access_log=[
            accesslog_pb2.AccessLog(
                name="envoy.access_loggers.stdout",
                typed_config=typed(
                    stream_pb2.StdoutAccessLog(
                        log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=log_format)
                    )
                ),
            )
        ],
        http_filters=[router_filter()],
    )
    if tls:
        # Services read the caller from x-forwarded-client-cert (mesh/credentials.py's
        # caller_workload): Envoy replaces whatever a client sent with what it authenticated
        # itself (SANITIZE_SET), and names the client by its certificate's URI SAN.
        hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE_SET
        hcm.set_current_client_cert_details.uri = True
        # Authorization before routing: a refused call never reaches a cluster.
        hcm.http_filters.insert(0, rbac_filter())
    if tracing:
        hcm.tracing.CopyFrom(tracing_config())
        hcm.request_id_extension.CopyFrom(_tracing_request_id())
    if isinstance(route_config, str):
        hcm.rds.CopyFrom(hcm_pb2.Rds(route_config_name=route_config, config_source=ads_source()))
    else:
        hcm.route_config.CopyFrom(route_config)
    chain = listener_components_pb2.FilterChain(
        filters=[
            listener_components_pb2.Filter(
                name="envoy.filters.network.http_connection_manager", typed_config=typed(hcm)
            )
        ]
    )
    if tls:
        chain.transport_socket.CopyFrom(downstream_tls())
    return listener_pb2.Listener(name=name, address=socket_address(address), filter_chains=[chain])


# --- bootstrap ------------------------------------------------------------------------------------


def _overload_manager(max_downstream_connections: int) -> overload_pb2.OverloadManager:
    # A hard cap on downstream connections across all listeners (Envoy warns at start-up when
    # there is none): past it new connections are refused instead of exhausting memory/fds.
    return overload_pb2.OverloadManager(
        resource_monitors=[
            overload_pb2.ResourceMonitor(
                name="envoy.resource_monitors.global_downstream_max_connections",
                typed_config=typed(
                    downstream_connections_pb2.DownstreamConnectionsConfig(
                        max_active_downstream_connections=max_downstream_connections
                    )
                ),
            )
        ]
    )


def build_bootstrap(
    *,
    listen: Address,
    admin: Address,
    endpoints: Mapping[str, Sequence[Address]],
    services: Sequence[ServiceSpec] = SERVICES,
    discovery: Discovery = "STATIC",
    node_id: str = "capsule-mesh-envoy",
    max_downstream_connections: int = 50_000,
    otlp_endpoint: str = "",
) -> bootstrap_pb2.Bootstrap:
    """Envoy bootstrap for the mesh without a control plane: one gRPC listener routing by path
    prefix to one cluster per service, with the instances in `endpoints` (service name →
    addresses). otlp_endpoint (OTEL_EXPORTER_OTLP_ENDPOINT): Envoy's spans go there; empty: no
    tracing."""
    unknown = set(endpoints) - {s.name for s in services}
    if unknown:
        raise ValueError(f"endpoints for services not in the topology: {sorted(unknown)}")
    return bootstrap_pb2.Bootstrap(
        # Identifies this Envoy (in logs, and to a control plane if one is added).
        node=base_pb2.Node(id=node_id, cluster="capsule-mesh"),
        # Admin: /ready, /clusters (health per endpoint), /stats, /config_dump. Loopback only
        # outside compose: it can change Envoy's state (e.g. /healthcheck/fail).
        admin=bootstrap_pb2.Admin(address=socket_address(admin)),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(
            listeners=[build_listener(listen, build_route_config(services), tracing=bool(otlp_endpoint))],
            clusters=[
                *build_clusters(endpoints, services, discovery),
                *([build_otlp_cluster(otlp_endpoint)] if otlp_endpoint else []),
            ],
        ),
        overload_manager=_overload_manager(max_downstream_connections),
    )


# The ADS connection's own identity: two secrets Envoy reads from files (filesystem SDS), next to
# the identity they point at. Filesystem SDS, not certificates inline in the cluster: Envoy reloads
# a file-based secret when a file is renamed into its watched directory, but never reloads the
# certificates of a static TLS context (they would need a restart).
XDS_IDENTITY_SECRET = "xds-identity"
XDS_CA_SECRET = "xds-ca"
XDS_SDS_FILES = {XDS_IDENTITY_SECRET: "envoy-xds-identity.sds.json", XDS_CA_SECRET: "envoy-xds-ca.sds.json"}


def _file_sds(tls_dir: Path, name: str) -> secret_pb2.SdsSecretConfig:
    source = config_source_pb2.ConfigSource(
        path_config_source=config_source_pb2.PathConfigSource(path=str(tls_dir / XDS_SDS_FILES[name])),
        resource_api_version=config_source_pb2.V3,
    )
    return secret_pb2.SdsSecretConfig(name=name, sds_config=source)


def xds_tls_secrets(tls_dir: Path) -> list[secret_pb2.Secret]:
    """What the filesystem SDS files say: the identity and the CA are the files of `tls_dir`
    (mesh/pki.py: identity.pem holds the key then the certificate, replaced by one rename, so the
    two never mismatch; ca.pem). Envoy watches the directory and re-reads both on a rename: a
    renewed certificate is used by the next connection, without a restart."""
    identity = str(tls_dir / IDENTITY_NAME)
    watched = base_pb2.WatchedDirectory(path=str(tls_dir))
    return [
        secret_pb2.Secret(
            name=XDS_IDENTITY_SECRET,
            tls_certificate=tls_common_pb2.TlsCertificate(
                # The same file twice: each read takes the PEM blocks of its kind.
                certificate_chain=base_pb2.DataSource(filename=identity),
                private_key=base_pb2.DataSource(filename=identity),
                watched_directory=watched,
            ),
        ),
        secret_pb2.Secret(
            name=XDS_CA_SECRET,
            validation_context=tls_common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(filename=str(tls_dir / CA_NAME)), watched_directory=watched
            ),
        ),
    ]


def control_plane_tls(tls_dir: Path, sds_dir: Path | None = None) -> base_pb2.TransportSocket:
    """Envoy → control plane over mutual TLS, from files: the ADS connection cannot take its
    certificates over SDS from the very stream it has to open first. `tls_dir` is the directory as
    Envoy sees it; write_xds_sds_files() must have put the SDS files in `sds_dir` (default: the
    same directory; compose ships them apart, the certificate directory being the renewer's)."""
    sds_dir = sds_dir or tls_dir
    return _tls_socket(
        tls_pb2.UpstreamTlsContext(
            # The control plane's DNS SAN: its address (an IP, or "control-plane" in compose)
            # names nothing.
            sni=server_name(CONTROL_PLANE),
            common_tls_context=tls_pb2.CommonTlsContext(
                tls_certificate_sds_secret_configs=[_file_sds(sds_dir, XDS_IDENTITY_SECRET)],
                combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                    # Only the control plane may hand Envoy its configuration and its keys.
                    default_validation_context=tls_common_pb2.CertificateValidationContext(
                        match_typed_subject_alt_names=[_uri_san(CONTROL_PLANE)]
                    ),
                    validation_context_sds_secret_config=_file_sds(sds_dir, XDS_CA_SECRET),
                ),
                alpn_protocols=ALPN_H2,
            ),
        )
    )


def write_xds_sds_files(directory: Path, tls_dir: Path | None = None) -> list[Path]:
    """Write the filesystem SDS files of control_plane_tls() into `directory` (Envoy's identity
    directory), each replaced by a rename. tls_dir: the same directory as Envoy sees it, when that
    differs (a container's mount point)."""
    seen = tls_dir or directory
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for secret in xds_tls_secrets(seen):
        path = directory / XDS_SDS_FILES[secret.name]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"resources": [to_json(typed(secret))]}, indent=2) + "\n")
        tmp.replace(path)
        written.append(path)
    return written


def build_xds_bootstrap(
    *,
    admin: Address,
    control_plane: Address,
    node_id: str = "capsule-mesh-envoy",
    node_cluster: str = "capsule-mesh",
    max_downstream_connections: int = 50_000,
    tls_dir: Path | None = None,
    sds_dir: Path | None = None,
) -> bootstrap_pb2.Bootstrap:
    """Envoy bootstrap that only points at the control plane: listeners, routes, clusters and
    endpoints all arrive over one ADS stream (envoy/controlplane). tls_dir: Envoy's identity for
    that stream (control_plane_tls, with write_xds_sds_files); None: plain text (the development
    switch)."""
    xds_cluster = Cluster(
        name=XDS_CLUSTER,
        # An IP on loopback; a DNS name in compose ("control-plane").
        type=Cluster.STATIC if _is_ip(control_plane[0]) else Cluster.STRICT_DNS,
        # Loopback or the compose network: a control plane that does not accept in 1 s is down;
        # retry (below) rather than wait.
        connect_timeout=duration(1.0),
        load_assignment=load_assignment(XDS_CLUSTER, [control_plane]),
        # ADS is gRPC: HTTP/2 (h2c). Keep-alive PINGs notice a control plane that vanished
        # without a FIN, so Envoy reconnects instead of waiting.
        typed_extension_protocol_options=_http2_upstream(5.0, 2.0),
    )
    if tls_dir is not None:
        xds_cluster.transport_socket.CopyFrom(control_plane_tls(tls_dir, sds_dir))
    return bootstrap_pb2.Bootstrap(
        # The control plane keys its snapshots by node id: one per Envoy (or per group sharing it).
        node=base_pb2.Node(id=node_id, cluster=node_cluster),
        admin=bootstrap_pb2.Admin(address=socket_address(admin)),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=config_source_pb2.ApiConfigSource(
                api_type=config_source_pb2.ApiConfigSource.GRPC,
                transport_api_version=config_source_pb2.V3,
                # The node (id, cluster, build) only in the first message of a stream: it never
                # changes, and the control plane keeps it per stream.
                set_node_on_first_message_only=True,
                grpc_services=[
                    grpc_service_pb2.GrpcService(
                        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                            cluster_name=XDS_CLUSTER,
                            # Reconnect to a restarted control plane within a second (Envoy's
                            # default back-off grows to 30 s). Envoy keeps serving its last
                            # configuration meanwhile.
                            retry_policy=base_pb2.RetryPolicy(
                                retry_back_off=backoff_pb2.BackoffStrategy(
                                    base_interval=duration(0.1), max_interval=duration(1.0)
                                )
                            ),
                        )
                    )
                ],
            ),
            cds_config=ads_source(),
            lds_config=ads_source(),
        ),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(clusters=[xds_cluster]),
        overload_manager=_overload_manager(max_downstream_connections),
    )


def to_json(message: Message) -> dict[str, Any]:
    """Protobuf JSON of a message, with the proto's field names (what Envoy's docs and our
    comments use). Fields left at their default (and not in a oneof) are omitted: Envoy reads them
    back as the same defaults."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def write_bootstrap(config: bootstrap_pb2.Bootstrap, path: Path) -> Path:
    """Write the bootstrap as JSON (Envoy reads JSON bootstraps; JSON is a subset of YAML)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(config), indent=2, sort_keys=False) + "\n")
    return path


# --- compose -------------------------------------------------------------------------------------

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "envoy" / "compose.json"
COMPOSE_GRPC_PORT = 50051  # GRPC_LISTEN of every service container (compose.yaml)
COMPOSE_CONTROL_PLANE: Address = ("control-plane", 18000)  # the control-plane container


# Compose: the renewer writes Envoy's certificate into the certs volume (/certs/envoy); the SDS files
# that point Envoy at it are generated next to the bootstrap and mounted read-only.
COMPOSE_TLS_DIR = Path("/certs/envoy")
COMPOSE_SDS_DIR = Path("/etc/envoy/sds")
COMPOSE_SDS_SOURCE = COMPOSE_FILE.parent / "compose-sds"


def compose_bootstrap(
    services: Sequence[ServiceSpec] = SERVICES,
    tls_dir: Path | None = COMPOSE_TLS_DIR,
    sds_dir: Path | None = COMPOSE_SDS_DIR,
) -> bootstrap_pb2.Bootstrap:
    """Envoy's bootstrap in compose.yaml: admin on all interfaces of the container (compose
    publishes it on loopback); everything else (the listener on 0.0.0.0:10000, every service's
    replicas as they register) comes from the control-plane container over ADS. `services` is
    kept for the signature's sake: the control plane reads the topology itself. tls_dir: where the
    container finds Envoy's identity for the ADS connection (mounted; set-up writes the SDS files
    there with write_xds_sds_files(host directory, tls_dir)), see build_xds_bootstrap."""
    del services
    return build_xds_bootstrap(
        admin=("0.0.0.0", 9901), control_plane=COMPOSE_CONTROL_PLANE, tls_dir=tls_dir, sds_dir=sds_dir
    )


if __name__ == "__main__":
    # `python -m mesh.envoy_config compose`: regenerate envoy/compose.json (a test checks
    # the committed file is what this function builds).
    import sys

    if sys.argv[1:] != ["compose"]:
        raise SystemExit("usage: python -m mesh.envoy_config compose")
    write_bootstrap(compose_bootstrap(), COMPOSE_FILE)
    write_xds_sds_files(COMPOSE_SDS_SOURCE, COMPOSE_TLS_DIR)
    print(f"wrote {COMPOSE_FILE} and {COMPOSE_SDS_SOURCE}/")
