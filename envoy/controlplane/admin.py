"""The control plane's admin HTTP port (loopback): what it serves and what Envoy did with it.

GET /healthz        200 once the first snapshot is published (after the warm-up), 503 before
GET /status         snapshot versions per node, versions each node acknowledged
GET /nacks          every rejected update: node, type, rejected and kept versions, Envoy's error
GET /registry       registered instances: service, address, zone, metadata, lease expiry
GET /metrics        the control plane's own Prometheus metrics
GET /sd/prometheus  what Prometheus scrapes (its `http_sd_configs` format): see `scrape_groups`

No page shows a lease id, nor anything else that lets a caller act on the registry: this port is
plain HTTP with no caller identity, and SPEC §12 defends it as if an attacker could reach it.
What /sd/prometheus tells (where each instance's admin port listens) /registry tells already.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controlplane.cache import ENVOY, SnapshotCache
from controlplane.registry import Registry
from services.common.registration import METRICS_METADATA_KEY

JSON = "application/json"
DEFAULT_METRICS_PATH = "/metrics"


@dataclass(frozen=True)
class ScrapeTarget:
    """A process Prometheus scrapes that holds no lease: the gateway, Envoy, the control plane."""

    job: str
    address: str  # host:port
    metrics_path: str = DEFAULT_METRICS_PATH

    @classmethod
    def parse(cls, text: str) -> ScrapeTarget:
        """`job=host:port[/path]`, e.g. `envoy=127.0.0.1:9901/stats/prometheus`."""
        job, sep, rest = text.strip().partition("=")
        address, slash, path = rest.partition("/")
        host, colon, port = address.rpartition(":")
        if not sep or not job or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"scrape target {text!r}: expected job=host:port[/path]")
        return cls(job.strip(), address, f"/{path}" if slash else DEFAULT_METRICS_PATH)

    @classmethod
    def parse_list(cls, text: str) -> tuple[ScrapeTarget, ...]:
        """A comma-separated list of `parse`'s form; empty items are skipped."""
        return tuple(cls.parse(item) for item in text.split(",") if item.strip())

    def group(self) -> dict[str, Any]:
        labels = {"job": self.job, "service": self.job, "instance_name": self.job}
        if self.metrics_path != DEFAULT_METRICS_PATH:
            labels["__metrics_path__"] = self.metrics_path
        return {"targets": [self.address], "labels": labels}


def scrape_groups(registry: Registry, static: Sequence[ScrapeTarget], now: float) -> list[dict[str, Any]]:
    """Prometheus HTTP service discovery: one target group per live lease whose instance advertises
    its metrics address (metadata `metrics`), then the static targets.

    A lease past its expiry is left out even before the sweep drops it, and a deregistered one is
    gone from the registry: either way the instance leaves this answer at once, and Prometheus's
    target list at its next refresh. The `job` label is the service's name (Prometheus keeps a
    discovered `job` over the scrape config's job_name)."""
    groups: list[dict[str, Any]] = []
    for lease in registry.leases():
        endpoint = lease.endpoint
        metadata = dict(endpoint.metadata)
        metrics = metadata.get(METRICS_METADATA_KEY, "")
        if lease.expires_at <= now or not metrics:
            continue
        labels = {
            "job": endpoint.service,
            "service": endpoint.service,
            "instance_name": metadata.get("instance") or endpoint.address,
            "grpc_address": endpoint.address,
        }
        if endpoint.zone:
            labels["zone"] = endpoint.zone
        groups.append({"targets": [metrics], "labels": labels})
    groups.extend(target.group() for target in static)
    return groups


class _PlaneCollector(Collector):
    """Read at scrape time from the registry and the cache: nothing to keep in step."""

    def __init__(self, cache: SnapshotCache, registry: Registry, ready: Callable[[], bool]) -> None:
        self.cache = cache
        self.registry = registry
        self.ready = ready

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "controlplane_ready",
            "1 once the first snapshot is published (after the warm-up)",
            value=float(self.ready()),
        )
        instances = GaugeMetricFamily(
            "controlplane_registered_instances", "Instances holding a lease, by service", labels=["service"]
        )
        for service, endpoints in self.registry.endpoints().items():
            instances.add_metric([service], len(endpoints))
        yield instances
        clients = GaugeMetricFamily(
            "controlplane_connected_xds_clients", "xDS nodes with an open ADS stream, by kind", labels=["kind"]
        )
        kinds: dict[str, int] = {}
        for node_id in self.cache.connected:
            kind = self.cache.kinds.get(node_id, ENVOY)
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, count in sorted(kinds.items()):
            clients.add_metric([kind], count)
        yield clients
        yield GaugeMetricFamily(
            "controlplane_recent_nacks",
            "Rejected updates kept for /nacks (the last 100 at most)",
            value=len(self.cache.nacks),
        )


class Admin:
    def __init__(
        self,
        cache: SnapshotCache,
        registry: Registry,
        ready: Callable[[], bool],
        scrape_targets: Sequence[ScrapeTarget] = (),
    ) -> None:
        self.cache = cache
        self.registry = registry
        self.ready = ready
        # The processes Prometheus scrapes besides the registered instances (this one included).
        self.scrape_targets = tuple(scrape_targets)
        # A registry of its own: two control planes in one process (tests) never collide.
        self.metrics = CollectorRegistry()
        ProcessCollector(registry=self.metrics)
        self.metrics.register(_PlaneCollector(cache, registry, ready))

    def page(self, path: str) -> tuple[int, Any]:
        if path == "/healthz":
            return (200, {"ok": True}) if self.ready() else (503, {"ok": False, "reason": "warming up"})
        if path == "/status":
            return 200, self.cache.status()
        if path == "/nacks":
            return 200, [n.to_dict() for n in self.cache.nacks]
        if path == "/registry":
            now = time.monotonic()
            return 200, [
                {
                    "service": lease.endpoint.service,
                    "address": lease.endpoint.address,
                    "zone": lease.endpoint.zone,
                    "metadata": dict(lease.endpoint.metadata),
                    "expires_in": round(lease.expires_at - now, 3),
                }
                for lease in self.registry.leases()
            ]
        if path == "/sd/prometheus":
            return 200, scrape_groups(self.registry, self.scrape_targets, time.monotonic())
        return 404, {"error": "not found"}

    def response(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics)
        status, payload = self.page(path)
        return status, JSON, json.dumps(payload, indent=1).encode() + b"\n"
