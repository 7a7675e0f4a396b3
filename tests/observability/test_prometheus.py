"""Prometheus discovers the mesh through the control plane (GET /sd/prometheus, `http_sd_configs`).

- the discovery answer itself, on a registry with a fake clock: one group per live lease that
  advertises its admin port, a lapsed lease gone before the sweep, a deregistered one gone, the
  static targets (gateway, Envoy's /stats/prometheus, the control plane) after them;
- the configuration the launcher writes passes `promtool check config`;
- a real Prometheus (Debian's binary) on a test stack: every instance, the gateway, Envoy and the
  control plane are scraped and `up`; an instance SIGKILLed leaves the target list within one lease
  ttl + one discovery refresh + Prometheus's own update throttle, and every other target stays up;
  a new instance is scraped from its registration on, the configuration untouched.

A stack of its own (auth only, two instances, Prometheus on a free port): killing an instance never
disturbs the session `stack` other tests share.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from capsule.mesh.v1 import registry_pb2
from controlplane.admin import Admin, ScrapeTarget, scrape_groups
from controlplane.cache import SnapshotCache
from controlplane.registry import Registry

from launcher import infra as infra_mod
from launcher import prometheus
from launcher.keys import KeyPair
from launcher.stack import Stack
from mesh.topology import AUTH
from services.common.registration import METRICS_METADATA_KEY, Registrar
from tests.conftest import start_test_stack

pytestmark = pytest.mark.slow(35)

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_discovery_lists_live_leases_that_advertise_metrics_then_the_static_targets() -> None:
    clock = Clock()
    registry = Registry(ttl=1.5, clock=clock)
    a = registry.register(
        "auth", "127.0.0.1", 5001, "z1", {"instance": "auth-0", METRICS_METADATA_KEY: "127.0.0.1:6001"}
    )
    registry.register(
        "auth", "127.0.0.1", 5002, metadata={"instance": "auth-1", METRICS_METADATA_KEY: "127.0.0.1:6002"}
    )
    registry.register("auth", "127.0.0.1", 5003)  # advertises no metrics address: not scraped
    static = ScrapeTarget.parse_list("gateway=127.0.0.1:8080, envoy=127.0.0.1:9901/stats/prometheus")
    groups = scrape_groups(registry, static, clock.now)
    assert groups == [
        {
            "targets": ["127.0.0.1:6001"],
            "labels": {
                "job": "auth",
                "service": "auth",
                "instance_name": "auth-0",
                "grpc_address": "127.0.0.1:5001",
                "zone": "z1",
            },
        },
        {
            "targets": ["127.0.0.1:6002"],
            "labels": {"job": "auth", "service": "auth", "instance_name": "auth-1", "grpc_address": "127.0.0.1:5002"},
        },
        {"targets": ["127.0.0.1:8080"], "labels": {"job": "gateway", "service": "gateway", "instance_name": "gateway"}},
        {
            "targets": ["127.0.0.1:9901"],
            "labels": {
                "job": "envoy",
                "service": "envoy",
                "instance_name": "envoy",
                "__metrics_path__": "/stats/prometheus",
            },
        },
    ]
    # b lapses (a heartbeats): gone from the answer before any sweep dropped it from the registry.
    for _ in range(4):  # a heartbeats every ttl/3 as instances do
        clock.now += 0.5
        assert registry.heartbeat(a.lease_id)
    assert [g["labels"]["instance_name"] for g in scrape_groups(registry, (), clock.now)] == ["auth-0"]
    assert len(registry.leases()) == 3  # not swept yet
    registry.deregister(a.lease_id)
    assert scrape_groups(registry, (), clock.now) == []


@pytest.mark.parametrize("text", ["gateway", "=127.0.0.1:80", "gateway=127.0.0.1", "gateway=:80", "x=h:99999"])
def test_a_malformed_static_target_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="job=host:port"):
        ScrapeTarget.parse(text)


def test_the_admin_port_serves_discovery_as_json_and_its_own_metrics() -> None:
    registry = Registry(ttl=60.0)
    registry.register("auth", "127.0.0.1", 5001, metadata={METRICS_METADATA_KEY: "127.0.0.1:6001"})
    own = ScrapeTarget("control-plane", "127.0.0.1:18001")
    admin = Admin(SnapshotCache(), registry, lambda: True, scrape_targets=(own,))
    status, content_type, body = admin.response("/sd/prometheus")
    # Prometheus refuses an answer that is not application/json.
    assert (status, content_type) == (200, "application/json")
    assert [g["targets"] for g in json.loads(body)] == [["127.0.0.1:6001"], ["127.0.0.1:18001"]]
    status, content_type, body = admin.response("/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert 'controlplane_registered_instances{service="auth"} 1.0' in body.decode()
    assert "controlplane_ready 1.0" in body.decode()


async def test_an_instance_advertises_its_admin_port_as_its_metrics_address(monkeypatch: pytest.MonkeyPatch) -> None:
    async def after_start(metrics_listen: str | None, **metadata: str) -> str | None:
        instance = registry_pb2.ServiceInstance(service="auth", host="127.0.0.1", port=5001, metadata=metadata)
        registrar = Registrar("127.0.0.1:1", instance, metrics_listen=metrics_listen)
        try:
            await registrar._advertise_metrics()  # what start() does before it registers
            return registrar.instance.metadata.get(METRICS_METADATA_KEY)
        finally:
            await registrar.close()

    monkeypatch.setenv("ADMIN_LISTEN", "127.0.0.1:6001")
    assert await after_start(None) == "127.0.0.1:6001"  # the service process contract's variable
    assert await after_start("127.0.0.1:6002") == "127.0.0.1:6002"
    try:
        machine = f"{socket.gethostbyname(socket.gethostname())}:6003"
    except OSError:  # a machine whose name does not resolve (a fresh chroot): not advertised, still registers
        machine = None
    assert await after_start("0.0.0.0:6003") == machine
    assert await after_start("", instance="auth-0") is None  # "": not advertised
    assert await after_start(None, metrics="10.0.0.1:9") == "10.0.0.1:9"  # named by the instance: kept


def test_the_written_configuration_passes_promtool(tmp_path: Path) -> None:
    promtool = prometheus.find("promtool")
    if promtool is None:
        pytest.fail("no promtool: `make setup` installs Debian's prometheus package", pytrace=False)
    path = prometheus.write_config(tmp_path, "http://127.0.0.1:18001/sd/prometheus")
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(ValueError, match="scrape timeout"):
        prometheus.render_config("http://x/sd", scrape_interval=1.0, scrape_timeout=2.0)


def test_set_up_installs_the_package_when_a_binary_is_missing_and_stops_its_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    done: list[str] = []
    present = {"prometheus": "/usr/bin/prometheus"}  # promtool missing
    monkeypatch.setattr(prometheus, "find", present.get)

    def install(*packages: str) -> None:
        done.append("apt-get install " + " ".join(packages))
        present["promtool"] = "/usr/bin/promtool"

    monkeypatch.setattr(prometheus.Apt, "install", install)
    monkeypatch.setattr(prometheus, "disable_system_service", lambda: done.append("system service disabled"))
    assert prometheus.ensure_installed() == "/usr/bin/prometheus"
    assert done == ["apt-get install prometheus", "system service disabled"]
    done.clear()
    assert prometheus.ensure_installed() == "/usr/bin/prometheus"
    assert done == []  # both there: nothing installed, a system service left alone


# --- a real Prometheus on a stack ------------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh(infra: infra_mod.Infra, jwt_keys: KeyPair) -> Iterator[Stack]:
    if prometheus.find("prometheus") is None:
        pytest.fail("no prometheus binary: `make setup` installs Debian's prometheus package", pytrace=False)
    stack = start_test_stack(infra, jwt_keys, services=(AUTH,), instances={"auth": 2}, prometheus=True)
    try:
        yield stack
    finally:
        stack.close()


def active_targets(stack: Stack) -> dict[str, dict[str, Any]]:
    """Prometheus's active targets by scrape URL."""
    with urllib.request.urlopen(f"{stack.prometheus_url}/api/v1/targets?state=active", timeout=2) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return {t["scrapeUrl"]: t for t in answer["data"]["activeTargets"]}


def wait_for(what: str, check: Callable[[], T | None], timeout: float) -> T:
    """Poll `check` until it returns a value (not None); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        try:
            last = check()
        except OSError:
            last = None
        if last is not None:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)  # the poll's pace, not a synchronisation


def expected_urls(stack: Stack) -> dict[str, str]:
    """Scrape URL → what it is: every instance's admin port, the gateway, Envoy, the control plane."""
    urls = {f"http://{inst.admin_address}/metrics": inst.name for inst in stack.instances["auth"]}
    urls[f"{stack.gateway_url}/metrics"] = "gateway"
    urls[f"{stack.envoy_admin_url}/stats/prometheus"] = "envoy"
    urls[f"{stack.control_plane_admin_url}/metrics"] = "control-plane"
    return urls


def test_every_process_is_discovered_and_up_and_a_killed_instance_leaves(mesh: Stack) -> None:
    expected = expected_urls(mesh)
    view: dict[str, dict[str, Any]] = {}

    def all_up() -> dict[str, dict[str, Any]] | None:
        nonlocal view
        view = active_targets(mesh)
        return view if all(view.get(url, {}).get("health") == "up" for url in expected) else None

    # Discovery refresh (2 s) + Prometheus's update throttle (5 s) + the first scrape (2 s), slack.
    try:
        view = wait_for("every target up", all_up, timeout=30)
    finally:
        states = {expected.get(u, u): (t["health"], t.get("lastError")) for u, t in view.items()}
    assert set(view) == set(expected), states
    # Labelled by what they are: the job is the service (or gateway / envoy / control-plane).
    labels = {expected[u]: (t["labels"]["job"], t["labels"].get("instance_name")) for u, t in view.items()}
    assert labels == {
        "auth-0": ("auth", "auth-0"),
        "auth-1": ("auth", "auth-1"),
        "gateway": ("gateway", "gateway"),
        "envoy": ("envoy", "envoy"),
        "control-plane": ("control-plane", "control-plane"),
    }

    victim = mesh.instances["auth"][1]
    victim_url = f"http://{victim.admin_address}/metrics"
    killed_at = time.monotonic()
    mesh.kill_instance(victim)
    # One lease ttl (1.5 s) + a sweep, the next discovery refresh (2 s), Prometheus's update throttle
    # (5 s), the scrape pool's sync: 9 s at worst; the rest is margin for a busy machine.
    bound = mesh.settings.lease_ttl_seconds + prometheus.SD_REFRESH_SECONDS + 5.0 + 6.0
    after = wait_for(
        f"{victim.name}'s target gone", lambda: v if victim_url not in (v := active_targets(mesh)) else None, bound
    )
    gone_after = time.monotonic() - killed_at
    survivors = {expected[u]: t["health"] for u, t in after.items()}
    assert survivors == {name: "up" for url, name in expected.items() if url != victim_url}, (gone_after, after)

    # A new instance (new ports): scraped from its registration on, no configuration touched.
    newcomer = mesh.start_instance("auth")
    newcomer_url = f"http://{newcomer.admin_address}/metrics"
    found = wait_for(
        f"{newcomer.name}'s target up",
        lambda: v if (v := active_targets(mesh)).get(newcomer_url, {}).get("health") == "up" else None,
        timeout=30,
    )
    assert found[newcomer_url]["labels"]["instance_name"] == newcomer.name == "auth-2"
