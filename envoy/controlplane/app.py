"""The control plane process: registry + snapshot builder + cache + ADS, on one grpc.aio server.

    start-up:        MeshSnapshots: clusters, listeners, routes of the topology, built once
    registry change ──► MeshSnapshots.build(): the endpoint assignments only ──► cache.set_snapshot()
                        (Envoy's and gRPC clients' snapshots)                     ──► every ADS stream pushes

Warm-up: a (re)started control plane knows no instance. Publishing at once would hand Envoy an
empty endpoint set and fail every call, so the first snapshot waits `warmup_seconds` (default:
one lease ttl, within which every live instance's heartbeat got NOT_FOUND and it registered
again). Envoy keeps serving its last configuration meanwhile; its ADS requests simply wait.

Trust (SPEC §12): the gRPC port speaks mutual TLS with the `control-plane` workload's certificate
and takes only clients holding a mesh certificate; authorization.py then decides by that identity
who may use ADS and the registry. Plain text only with MESH_PLAINTEXT=1 (development), or when a
test builds its settings without `tls`.

Mutual TLS for Envoy (SPEC §12) is on exactly when a mesh CA is configured (MESH_CA_DIR): the
listener and clusters are built for TLS, and the control plane mints Envoy's certificate and
renews it (envoy_identity.py); a renewal publishes snapshots whose only change is the SDS version.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
from capsule.mesh.v1 import registry_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from controlplane.admin import Admin, ScrapeTarget
from controlplane.ads import AggregatedDiscoveryService
from controlplane.authorization import Authorization
from controlplane.cache import PROXYLESS, SnapshotCache
from controlplane.envoy_identity import EnvoyIdentity
from controlplane.registry import Registry
from controlplane.registry_service import RegistryService
from controlplane.snapshot import MeshSnapshots
from mesh import envoy_config
from mesh.credentials import MeshTLS, TLSSetupError, add_port
from mesh.pki import MAX_TTL, Issued
from mesh.timing import TIMING, Timing, TimingError
from mesh.topology import SERVICES, ServiceSpec
from services.common import admin_http, tracing
from services.common.background import cancel_and_wait
from services.common.registration import advertised_host

log = logging.getLogger(__name__)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


@dataclass(frozen=True)
class ControlPlaneSettings:
    # gRPC: ADS for Envoy and RegistryService for instances, one port.
    listen: str = "127.0.0.1:18000"
    admin_listen: str = "127.0.0.1:18001"
    # Where Envoy's gRPC listener binds (the LDS resource's address).
    envoy_listen: str = "127.0.0.1:10000"
    # Lease ttl, heartbeat, sweep, deregister confirmation bound: mesh/timing.py.
    timing: Timing = TIMING
    warmup_seconds: float | None = None  # None: one lease ttl
    services: tuple[ServiceSpec, ...] = field(default=SERVICES)
    # OTEL_EXPORTER_OTLP_ENDPOINT: Envoy's listener traces and exports its spans there (OTLP/gRPC,
    # mesh.envoy_config.tracing_config); empty: no tracing in Envoy.
    otlp_endpoint: str = ""
    # The control-plane workload's identity and the mesh CA (MESH_TLS_DIR); None: plain text.
    tls: MeshTLS | None = None
    # The mesh CA (ca.pem, ca-key.pem): set, Envoy speaks mutual TLS with certificates minted here
    # (and the control plane must itself serve TLS: Envoy's key travels on the ADS stream); None,
    # plain text (the development switch).
    ca_dir: Path | None = None
    # Life of Envoy's certificate (SPEC §12: at most 24 h), renewed at half of it.
    cert_ttl_seconds: float = MAX_TTL.total_seconds()
    # What Prometheus scrapes besides the registered instances and this process (GET /sd/prometheus):
    # processes that hold no lease, named by whoever starts them (CONTROL_PLANE_SCRAPE_TARGETS,
    # `job=host:port[/path]`, comma-separated: the launcher names the gateway and Envoy's admin).
    scrape_targets: tuple[ScrapeTarget, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.cert_ttl_seconds <= MAX_TTL.total_seconds():
            raise ValueError(
                f"cert_ttl_seconds must be in (0, {MAX_TTL.total_seconds():.0f}], not {self.cert_ttl_seconds}"
            )

    @classmethod
    def from_env(cls) -> ControlPlaneSettings:
        names = [n.strip() for n in os.environ.get("CONTROL_PLANE_SERVICES", "").split(",") if n.strip()]
        services = tuple(s for s in SERVICES if s.name in names) if names else SERVICES
        warmup = os.environ.get("CONTROL_PLANE_WARMUP_SECONDS", "")
        ca_dir = os.environ.get("MESH_CA_DIR", "")
        ttl = os.environ.get("MESH_CERT_TTL_SECONDS", "")
        try:
            # LEASE_TTL_SECONDS (and any other override) must keep every relation: else no start.
            timing = Timing.from_env().check()
        except TimingError as exc:
            raise SystemExit(str(exc)) from None
        try:
            tls = MeshTLS.from_env()
        except (TLSSetupError, OSError, ValueError) as exc:
            raise SystemExit(f"mesh TLS: {exc}") from None
        if ca_dir and tls is None:
            # Envoy's private key would travel on a plain-text ADS stream.
            raise SystemExit(
                "MESH_CA_DIR needs MESH_TLS_DIR: the control plane serves Envoy's key only over mutual TLS"
            )
        try:
            scrape_targets = ScrapeTarget.parse_list(os.environ.get("CONTROL_PLANE_SCRAPE_TARGETS", ""))
        except ValueError as exc:
            raise SystemExit(f"CONTROL_PLANE_SCRAPE_TARGETS: {exc}") from None
        try:
            return cls(
                listen=os.environ.get("CONTROL_PLANE_LISTEN", cls.listen),
                admin_listen=os.environ.get("CONTROL_PLANE_ADMIN_LISTEN", cls.admin_listen),
                envoy_listen=os.environ.get("CONTROL_PLANE_ENVOY_LISTEN", cls.envoy_listen),
                timing=timing,
                warmup_seconds=float(warmup) if warmup else None,
                services=services,
                otlp_endpoint=_otlp_endpoint(),
                tls=tls,
                ca_dir=Path(ca_dir) if ca_dir else None,
                cert_ttl_seconds=float(ttl) if ttl else cls.cert_ttl_seconds,
                scrape_targets=scrape_targets,
            )
        except ValueError as exc:
            raise SystemExit(f"MESH_CERT_TTL_SECONDS: {exc}") from None


def _otlp_endpoint() -> str:
    """Where Envoy exports its spans (services.common.tracing.otlp_endpoint: OpenTelemetry's
    standard variables); checked now rather than refused by Envoy later."""
    endpoint = tracing.otlp_endpoint()
    if endpoint:
        try:
            envoy_config.otlp_address(endpoint)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    return endpoint


class ControlPlane:
    def __init__(self, settings: ControlPlaneSettings) -> None:
        self.settings = settings
        self.registry = Registry(settings.timing.lease_ttl_seconds)
        self.cache = SnapshotCache()
        self.ready = False
        self.server: grpc.aio.Server | None = None
        self.admin_server: admin_http.AdminServer | None = None
        self.admin: Admin | None = None
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []
        # The topology's clusters, listeners and routes, built once; which methods may retry is read
        # once from the generated descriptors (the protos decide it).
        self.snapshots = MeshSnapshots(
            listen=_split(settings.envoy_listen),
            services=settings.services,
            idempotent_methods=envoy_config.idempotent_methods(),
            tls=settings.ca_dir is not None,
            otlp_endpoint=settings.otlp_endpoint,
        )
        self.registry.subscribe(self._rebuild)
        self.envoy_identity: EnvoyIdentity | None = None
        if settings.ca_dir is not None:
            ttl = timedelta(seconds=settings.cert_ttl_seconds)
            self.envoy_identity = EnvoyIdentity.load(settings.ca_dir, self._use_envoy_identity, ttl=ttl)
            self.envoy_identity.rotate()  # before the first snapshot, which must carry it

    def _use_envoy_identity(self, issued: Issued) -> None:
        self.snapshots.use_envoy_identity(key_pem=issued.key_pem, cert_pem=issued.cert_pem, ca_pem=issued.ca_pem)
        self._rebuild()

    def rotate_envoy_certificate(self) -> Issued:
        """Envoy gets a new certificate now (an SDS push); the renewal schedule restarts from it."""
        if self.envoy_identity is None:
            raise RuntimeError("no mesh CA configured (MESH_CA_DIR): Envoy speaks plain text")
        return self.envoy_identity.rotate()

    @property
    def services(self) -> Sequence[ServiceSpec]:
        return self.settings.services

    def _rebuild(self) -> None:
        if not self.ready:
            return
        # Only the endpoint assignments are built; every other resource (and its version) is the
        # topology's, unchanged: an endpoint change is an EDS push and nothing else.
        envoy, proxyless = self.snapshots.build(self.registry.endpoints())
        # Both published in this one synchronous step: a Deregister waiting for in_sync never sees
        # one kind updated and the other not yet.
        self.cache.set_snapshot(proxyless, kind=PROXYLESS)
        self.cache.set_snapshot(envoy)

    async def start(self) -> ControlPlane:
        self.server = grpc.aio.server(
            options=[
                # Envoy pings the ADS connection every 5 s (bootstrap keep-alive): allow it.
                ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
            # Who may call what, by the identity in the client's certificate (authorization.py).
            interceptors=[Authorization()],
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            AggregatedDiscoveryService(self.cache), self.server
        )
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryService(self.registry, self.cache, self.settings.timing), self.server
        )
        self.port = add_port(self.server, self.settings.listen, self.settings.tls)
        if self.port == 0:
            raise SystemExit(f"cannot listen on {self.settings.listen}")
        await self.server.start()
        self.admin_server = await admin_http.serve(self.settings.admin_listen, self._admin_page)
        # Its own metrics are on the admin port: the port bound (a test's ":0" resolved), the host
        # Prometheus can dial (a wildcard listen in compose: this machine's address; a look-up).
        host, _ = _split(self.settings.admin_listen)
        own = ScrapeTarget(
            "control-plane", f"{await asyncio.to_thread(advertised_host, host)}:{self.admin_server.port}"
        )
        self.admin = Admin(
            self.cache, self.registry, lambda: self.ready, scrape_targets=(*self.settings.scrape_targets, own)
        )
        self._tasks = [asyncio.create_task(self._sweep()), asyncio.create_task(self._warm_up())]
        if self.envoy_identity is not None:
            self._tasks.append(asyncio.create_task(self.envoy_identity.renew_forever()))
        log.info(
            "control plane serving",
            extra={"fields": {"grpc": self.settings.listen, "admin": self.settings.admin_listen}},
        )
        return self

    async def _warm_up(self) -> None:
        warmup = self.settings.warmup_seconds
        if warmup is None:
            warmup = self.settings.timing.lease_ttl_seconds
        if warmup > 0:
            await asyncio.sleep(warmup)  # a deliberate delay (see module doc), not synchronisation
        self.ready = True
        self._rebuild()
        log.info("first snapshot published", extra={"fields": {"endpoints": self._counts()}})

    def _admin_page(self, path: str) -> tuple[int, str, bytes]:
        if self.admin is None:  # the port answers before the Admin (which needs the port) exists
            return 503, "text/plain", b"starting\n"
        return self.admin.response(path)

    def _counts(self) -> dict[str, int]:
        return {name: len(eps) for name, eps in self.registry.endpoints().items()}

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.timing.sweep_seconds)
            for endpoint in self.registry.expire():
                log.warning(
                    "lease lapsed: endpoint removed",
                    extra={"fields": {"service": endpoint.service, "address": endpoint.address}},
                )

    async def stop(self, grace: float = 1.0) -> None:
        await cancel_and_wait(*self._tasks)
        if self.admin_server is not None:
            await self.admin_server.close()
        if self.server is not None:
            await self.server.stop(grace)


async def serve(settings: ControlPlaneSettings | None = None) -> None:
    plane = await ControlPlane(settings or ControlPlaneSettings.from_env()).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if plane.envoy_identity is not None:
        # SIGHUP: Envoy gets a new certificate now (an operator's rotation; the launcher's too).
        loop.add_signal_handler(signal.SIGHUP, plane.rotate_envoy_certificate)
    await stop.wait()
    log.info("stopping")
    await plane.stop()
