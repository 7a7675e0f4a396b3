"""The Envoy config builder: structure, purity, and real Envoy's own validation."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from mesh import envoy_config
from mesh.topology import AUTH, RECIPIENTS, SERVICES

ENVOY = str(Path(sys.executable).parent / "envoy")
ENDPOINTS = {"auth": [("127.0.0.1", 50051), ("127.0.0.1", 50052)]}


def bootstrap(**kwargs: Any) -> dict[str, Any]:
    """The static bootstrap as Envoy reads it (protobuf JSON of the typed message)."""
    return envoy_config.to_json(bootstrap_message(**kwargs))


def bootstrap_message(**kwargs: Any) -> Any:
    args: dict[str, Any] = {"listen": ("127.0.0.1", 10000), "admin": ("127.0.0.1", 9901), "endpoints": ENDPOINTS}
    args.update(kwargs)
    return envoy_config.build_bootstrap(**args)


def envoy_validate(config: dict[str, Any], tmp_path: Path, base_id: int) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(config, indent=2))
    return subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--base-id", str(base_id), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def test_real_envoy_accepts_the_static_config(tmp_path: Path) -> None:
    result = envoy_validate(bootstrap(), tmp_path, base_id=31001)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "OK" in result.stdout
    # No deprecation warnings: a deprecated field is a future breaking change.
    assert "deprecated" not in (result.stderr + result.stdout).lower()


def test_real_envoy_accepts_the_dns_config_and_several_services(tmp_path: Path) -> None:
    config = bootstrap(
        listen=("0.0.0.0", 10000),
        admin=("0.0.0.0", 9901),
        endpoints={"auth": [("auth", 50051)], "recipients": [("recipients", 50051)]},
        services=(AUTH, RECIPIENTS),
        discovery="STRICT_DNS",
    )
    result = envoy_validate(config, tmp_path, base_id=31002)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "deprecated" not in (result.stderr + result.stdout).lower()


def test_real_envoy_rejects_a_broken_config(tmp_path: Path) -> None:
    """The validation test above means something: Envoy does reject a wrong field."""
    config = bootstrap()
    config["static_resources"]["clusters"][0]["lb_policy"] = "NOT_A_POLICY"
    assert envoy_validate(config, tmp_path, base_id=31003).returncode != 0


def test_pure_and_deterministic() -> None:
    endpoints = copy.deepcopy(ENDPOINTS)
    first = bootstrap_message(endpoints=endpoints)
    assert endpoints == ENDPOINTS  # inputs untouched
    again = bootstrap_message(endpoints=copy.deepcopy(ENDPOINTS))
    assert first.SerializeToString(deterministic=True) == again.SerializeToString(deterministic=True)
    assert json.dumps(envoy_config.to_json(first)) == json.dumps(envoy_config.to_json(again))


def test_the_written_file_is_the_messages_json(tmp_path: Path) -> None:
    path = envoy_config.write_bootstrap(bootstrap_message(), tmp_path / "envoy.json")
    assert json.loads(path.read_text()) == bootstrap()


def test_listener_admin_and_codec() -> None:
    config = bootstrap(listen=("127.0.0.1", 10123), admin=("127.0.0.1", 9123))
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9123}
    listener = config["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 10123}
    manager = hcm(config)
    # AUTO is the enum's default, which protobuf JSON leaves out of the file: read the message.
    typed = hcm_pb2.HttpConnectionManager()
    assert bootstrap_message().static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(typed)
    assert typed.codec_type == hcm_pb2.HttpConnectionManager.AUTO
    assert [f["name"] for f in manager["http_filters"]] == ["envoy.filters.http.router"]
    assert manager["access_log"][0]["name"] == "envoy.access_loggers.stdout"


def test_routes_by_grpc_prefix_with_timeouts_and_retries() -> None:
    routes = hcm(bootstrap(services=(AUTH, RECIPIENTS), endpoints={}))["route_config"]["virtual_hosts"][0]["routes"]
    table = {r["match"]["prefix"]: r["route"]["cluster"] for r in routes if "prefix" in r["match"]}
    assert table == {
        "/capsule.auth.v1.": "auth",
        "/grpc.reflection.": "auth",
        "/capsule.recipients.v1.": "recipients",
    }
    for route in routes:
        assert route["match"]["grpc"] == {}
        action = route["route"]
        assert action["timeout"] == "15s"
        assert action["max_stream_duration"]["grpc_timeout_header_max"] == "15s"
        retry = action["retry_policy"]
        assert retry["num_retries"] == 2
        # Idempotent unary methods (exact routes) are hedged after 0.15 s; the rest wait 5 s a try.
        hedged = "hedge_policy" in action
        assert retry["per_try_timeout"] == ("0.150s" if hedged else "5s")
        assert hedged == ("path" in route["match"] and "Reflection" not in route["match"]["path"])
        assert retry["retry_back_off"] == {"base_interval": "0.025s", "max_interval": "0.250s"}
        assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"


def test_the_static_bootstrap_retries_writes_only_when_they_never_reached_a_server() -> None:
    """CONTROL_PLANE=0 uses the protos' per-method policy too: a read is retried after an
    UNAVAILABLE or a reset, a write only on connect-failure / refused-stream (never replayed)."""
    routes = hcm(bootstrap(services=(AUTH,), endpoints={}))["route_config"]["virtual_hosts"][0]["routes"]
    policy = {r["match"].get("path") or r["match"]["prefix"]: r["route"]["retry_policy"]["retry_on"] for r in routes}
    assert policy["/capsule.auth.v1.AuthService/GetMe"] == "unavailable,reset,connect-failure,refused-stream"
    assert "/capsule.auth.v1.AuthService/SignUp" not in policy  # a write: the service's prefix route
    assert policy["/capsule.auth.v1."] == "connect-failure,refused-stream"


def test_one_cluster_per_service_with_health_checks_and_protection() -> None:
    config = bootstrap(services=(AUTH, RECIPIENTS), endpoints=ENDPOINTS)
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert set(clusters) == {"auth", "recipients"}
    auth = clusters["auth"]
    assert auth["type"] == "STATIC"
    hosts = [
        e["endpoint"]["address"]["socket_address"]
        for group in auth["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
    ]
    assert hosts == [{"address": "127.0.0.1", "port_value": 50051}, {"address": "127.0.0.1", "port_value": 50052}]
    # A service without instances yet: an empty cluster, not a missing one (protobuf JSON leaves
    # the empty list out).
    assert clusters["recipients"]["load_assignment"]["endpoints"][0].get("lb_endpoints", []) == []
    assert auth["lb_policy"] in ("LEAST_REQUEST", "ROUND_ROBIN")
    options = auth["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "connection_keepalive" in options["explicit_http_config"]["http2_protocol_options"]
    (check,) = auth["health_checks"]
    assert check["grpc_health_check"] == {"service_name": "capsule.auth.v1.AuthService"}
    assert clusters["recipients"]["health_checks"][0]["grpc_health_check"]["service_name"] == (
        "capsule.recipients.v1.RecipientsService"
    )
    assert (check["interval"], check["unhealthy_threshold"], check["healthy_threshold"]) == ("1s", 2, 1)
    assert check["no_traffic_interval"] == "1s"
    outlier = auth["outlier_detection"]
    assert outlier["consecutive_gateway_failure"] == 2 and outlier["enforcing_consecutive_gateway_failure"] == 100
    assert "consecutive_5xx" in outlier
    (thresholds,) = auth["circuit_breakers"]["thresholds"]
    assert thresholds["retry_budget"]["budget_percent"]["value"] == 20.0
    assert {"max_connections", "max_pending_requests", "max_requests"} <= set(thresholds)


def test_dns_discovery_uses_the_dns_cluster_extension() -> None:
    config = bootstrap(services=(AUTH,), endpoints={"auth": [("auth", 50051)]}, discovery="STRICT_DNS")
    (cluster,) = config["static_resources"]["clusters"]
    assert "type" not in cluster
    assert cluster["cluster_type"]["name"] == "envoy.cluster.dns"


def test_endpoints_for_an_unknown_service_are_refused() -> None:
    with pytest.raises(ValueError, match="nope"):
        bootstrap(endpoints={"nope": [("127.0.0.1", 1)]})


def test_default_topology_is_the_four_services() -> None:
    assert [s.name for s in SERVICES] == ["auth", "recipients", "capsules", "notifications"]


# --- mutual TLS (SPEC §12) ------------------------------------------------------------------------


def _tls_context(socket: Any, kind: Any) -> Any:
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    context = getattr(tls_pb2, kind)()
    assert socket.name == "envoy.transport_sockets.tls" and socket.typed_config.Unpack(context)
    return context


def test_plain_text_stays_the_default() -> None:
    listener = envoy_config.build_listener(("127.0.0.1", 10000), "grpc_routes")
    cluster: Any = envoy_config.build_cluster(AUTH, (), "EDS")
    assert not listener.filter_chains[0].HasField("transport_socket")
    assert not cluster.HasField("transport_socket")
    assert envoy_config.sds_secret_names(listener) == envoy_config.sds_secret_names(cluster) == set()


def test_the_tls_listener_requires_a_mesh_certificate_and_forwards_the_callers_identity() -> None:
    listener = envoy_config.build_listener(("127.0.0.1", 10000), "grpc_routes", tls=True)
    context = _tls_context(listener.filter_chains[0].transport_socket, "DownstreamTlsContext")
    assert context.require_client_certificate.value
    common = context.common_tls_context
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["envoy-identity"]
    assert common.validation_context_sds_secret_config.name == "mesh-ca"
    assert common.validation_context_sds_secret_config.sds_config.HasField("ads")
    assert list(common.alpn_protocols) == ["h2"]
    manager = hcm_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert manager.forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE_SET
    assert manager.set_current_client_cert_details.uri
    assert [f.name for f in manager.http_filters] == ["envoy.filters.http.rbac", "envoy.filters.http.router"]
    assert envoy_config.sds_secret_names(listener) == {"envoy-identity", "mesh-ca"}


def test_rbac_allows_each_path_to_the_declared_callers_only() -> None:
    from envoy.config.rbac.v3 import rbac_pb2

    callers = {
        "/a.S/Public1": frozenset({"gateway", "operator"}),
        "/a.S/Public2": frozenset({"operator", "gateway"}),
        "/a.S/Internal": frozenset({"capsules"}),
        "/a.S/Nobody": frozenset(),
    }
    policies = envoy_config.rbac_policies(callers, ("/grpc.health.v1.Health/",))
    # Grouped by caller set; a path nobody may call is in no policy (denied).
    assert set(policies) == {"callers:gateway,operator", "callers:capsules", "open:any-mesh-identity"}
    public = policies["callers:gateway,operator"]
    assert [p.url_path.path.exact for p in public.permissions] == ["/a.S/Public1", "/a.S/Public2"]
    assert [p.authenticated.principal_name.exact for p in public.principals] == [
        "spiffe://capsule-mesh/gateway",
        "spiffe://capsule-mesh/operator",
    ]
    assert "/a.S/Nobody" not in str(policies)
    opened = policies["open:any-mesh-identity"]
    assert opened.permissions[0].url_path.path.prefix == "/grpc.health.v1.Health/"
    assert opened.principals[0].authenticated.principal_name.prefix == "spiffe://capsule-mesh/"
    # The filter built from the protos: ALLOW, everything else denied.
    from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2

    config = rbac_filter_pb2.RBAC()
    assert envoy_config.rbac_filter().typed_config.Unpack(config)
    assert config.rules.action == rbac_pb2.RBAC.ALLOW
    internal = config.rules.policies["callers:capsules,notifications,recipients"]
    assert [p.url_path.path.exact for p in internal.permissions] == ["/capsule.auth.v1.AuthService/GetUsers"]


def test_tls_clusters_talk_only_to_the_service_they_name() -> None:
    cluster: Any = envoy_config.build_cluster(RECIPIENTS, (), "EDS", tls=True)
    context = _tls_context(cluster.transport_socket, "UpstreamTlsContext")
    assert context.sni == "recipients.capsule-mesh"
    common = context.common_tls_context
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["envoy-identity"]
    combined = common.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "mesh-ca"
    (san,) = combined.default_validation_context.match_typed_subject_alt_names
    assert san.matcher.exact == "spiffe://capsule-mesh/recipients"
    assert list(common.alpn_protocols) == ["h2"]
    # Health checks use the cluster's transport socket: nothing selects another one.
    assert not cluster.health_checks[0].HasField("transport_socket_match_criteria")


def test_real_envoy_accepts_the_tls_bootstrap_to_the_control_plane(tmp_path: Path) -> None:
    from mesh.pki import MeshCA

    tls_dir = tmp_path / "envoy-tls"
    MeshCA.create(tmp_path / "ca").issue("envoy").write(tls_dir)
    envoy_config.write_xds_sds_files(tls_dir)
    config = envoy_config.build_xds_bootstrap(
        admin=("127.0.0.1", 9901), control_plane=("127.0.0.1", 18000), tls_dir=tls_dir
    )
    result = envoy_validate(envoy_config.to_json(config), tmp_path, base_id=31004)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "deprecated" not in (result.stderr + result.stdout).lower()
    (xds,) = config.static_resources.clusters
    context = _tls_context(xds.transport_socket, "UpstreamTlsContext")
    assert context.sni == "control-plane.capsule-mesh"
    combined = context.common_tls_context.combined_validation_context
    assert combined.default_validation_context.match_typed_subject_alt_names[0].matcher.exact == (
        "spiffe://capsule-mesh/control-plane"
    )
    # The files the SDS sources name: identity.pem twice, ca.pem, both watched in tls_dir.
    sds = {s.name: s for s in envoy_config.xds_tls_secrets(tls_dir)}
    identity = sds["xds-identity"].tls_certificate
    assert identity.certificate_chain.filename == identity.private_key.filename == str(tls_dir / "identity.pem")
    assert identity.watched_directory.path == str(tls_dir)
    assert sds["xds-ca"].validation_context.trusted_ca.filename == str(tls_dir / "ca.pem")
    # The plain-text default (compose.json) is unchanged.
    plain = envoy_config.build_xds_bootstrap(admin=("127.0.0.1", 9901), control_plane=("127.0.0.1", 18000))
    assert not plain.static_resources.clusters[0].HasField("transport_socket")
