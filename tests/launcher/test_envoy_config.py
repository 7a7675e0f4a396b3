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
        assert retry["per_try_timeout"] == "5s"
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


def test_default_topology_is_the_three_services() -> None:
    assert [s.name for s in SERVICES] == ["auth", "recipients", "capsules"]
