"""The whole mesh on one machine: migrations, the xDS control plane, N instances per service,
Envoy, the gateway.

Used by `python3 -m launcher up` (fixed ports) and by the pytest `stack` fixture (free ports, unique
database names and cache prefix, databases dropped at the end):

    settings = StackSettings.for_tests(infra, keys, work_dir=...)
    with Stack(settings) as stack:          # start(): blocks until everything is ready
        stack.gateway_url, stack.envoy_grpc, stack.addresses("auth")
        stack.kill_instance(stack.instances["auth"][0])
        stack.wait_envoy_health("auth", healthy=1)

Start order: migrations (straight to the primary) → PgBouncer when asked (`pgbouncer=True`: the
services' DATABASE_URL goes through it) → control plane → service instances (they register with it) → Envoy
(its bootstrap only points at the control plane; everything else arrives over ADS) → gateway
(a proxyless xDS client of the same control plane: it calls the instances directly) → Prometheus
when asked (`prometheus=True`; its targets come from the control plane's /sd/prometheus).
Close: the reverse (Prometheus, gateway, Envoy, instances, control plane), each step SIGTERM →
wait → SIGKILL.
With `control_plane=False` Envoy gets the static bootstrap of mesh/envoy_config.py instead
(the fallback: every planned instance listed, no registration; plain text only).

Mutual TLS (SPEC §12, `mesh_tls`): before anything starts, the stack issues every workload's
certificate from the mesh CA (keys.mesh_ca) into <work_dir>/certs/<workload>/ and hands each
process its directory (MESH_TLS_DIR); the control plane also gets the CA (MESH_CA_DIR) to issue
Envoy's over SDS. `rotate_certificates()` issues them all again: every process picks the new ones
up by itself. The launcher's own probes and the tests' calls present the operator's certificate
(`identity("operator")`) or any workload's (`identity(name)`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.request
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2

from launcher import pgbouncer as pgb
from launcher import prometheus as prom
from launcher.bootstrap import REPO, Apt
from launcher.infra import Infra
from launcher.keys import KeyPair, ensure_operator
from launcher.process import (
    GrpcHealthProbe,
    ManagedProcess,
    StartupError,
    finish,
    free_port,
    http_ok,
    stop_all,
)
from mesh import envoy_config
from mesh.credentials import MeshTLS, open_channel
from mesh.pki import CA_NAME, CONTROL_PLANE, ENVOY, GATEWAY, IDENTITY_NAME, OPERATOR, Wanted, renew_due, server_name
from mesh.timing import TIMING, Timing, TimingError
from mesh.topology import SERVICES, ServiceSpec, by_name, gateway_proto_modules
from services.common import tracing

# Every service may call every other through Envoy: `<NAME>_TARGET`. Names of services that do not
# exist yet are set empty, so a stale value in the caller's shell never leaks in.
KNOWN_TARGETS = ("auth", "recipients", "capsules", "notifications")

# Light argon2 for tests: hashing cost is not what the tests measure.
TEST_ARGON2 = {"ARGON2_TIME_COST": "1", "ARGON2_MEMORY_KIB": "8192"}

# A test stack's gateway serves a whole suite from 127.0.0.1: SPEC §7's 60/min per IP would
# throttle it. The limiter stays on (its cost is part of every test); tests of the limits start
# gateways of their own with small ones.
TEST_RATE_LIMITS = {
    "GATEWAY_RATELIMIT_IP": "100000/60",
    "GATEWAY_RATELIMIT_USER": "100000/60",
    "GATEWAY_RATELIMIT_LOGIN": "100000/60",
}

# Small database pools in test stacks: a session runs three stacks and more of their own beside
# them, four services of two instances each, on a Postgres of max_connections 100 (Debian's
# default). A pool keeps at most this many connections open; bursts borrow overflow connections,
# closed once returned.
TEST_DB_POOLS = {"DB_POOL_SIZE": "2", "DB_MAX_OVERFLOW": "28", "DB_REPLICA_POOL_SIZE": "2"}

# The auth service's own log-in failure limits (SPEC §3): the suite fails log-ins from 127.0.0.1
# all day, so the per-IP one is raised like the gateway's; the per-account one stays (10), no test
# fails one account's log-in that often. Tests of the limits start auth instances with small ones.
TEST_LOGIN_LIMITS = {"LOGIN_FAILURES_PER_IP": "100000"}


@dataclass(frozen=True)
class Host:
    """A machine of its own for one process: a Linux network namespace with its own address
    (tests/netns builds them). The process runs inside it (`ip netns exec`) and listens on
    `address`; its ports stay the stack's (a fresh namespace has every port free)."""

    namespace: str
    address: str

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]


@dataclass(frozen=True)
class StackSettings:
    infra: Infra
    keys: KeyPair
    host: str = "127.0.0.1"
    gateway_port: int = 8080
    envoy_port: int = 10000
    envoy_admin_port: int = 9901
    # The xDS control plane (python -m controlplane): gRPC (ADS + registry) and admin HTTP ports.
    control_plane: bool = True
    # With the control plane: the gateway reaches the services as a proxyless xDS client (True)
    # or through Envoy (False: GATEWAY_PROXYLESS=0), e.g. to compare the two hops.
    gateway_proxyless: bool = True
    control_plane_port: int = 18000
    control_plane_admin_port: int = 18001
    # Registration lease: heartbeats every ttl/3; a SIGKILLed instance leaves within ~ttl
    # (mesh/timing.py).
    lease_ttl_seconds: float = TIMING.lease_ttl_seconds
    services: tuple[ServiceSpec, ...] = SERVICES
    # Instance count per service name; missing names use the topology's default.
    instances: Mapping[str, int] = field(default_factory=dict)
    # Appended to every database name (tests: "_t<hex>"), so tests never touch `make up`'s data.
    database_suffix: str = ""
    # Redis key prefix for every process (services append "<name>:").
    cache_prefix: str = ""
    # Extra environment for the services / the gateway / every process.
    service_env: Mapping[str, str] = field(default_factory=dict)
    gateway_env: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    with_gateway: bool = True
    gateway_module: str = "gateway"
    # Envoy worker threads. 1 on the 2-core target machine: the Python processes need the cores
    # more (measured there: Envoy costs ~0.2 ms CPU per proxied call, the Python side about twice that).
    envoy_concurrency: int = 1
    log_level: str = "INFO"
    # Logs (<work_dir>/logs/<process>.log) and the generated Envoy bootstrap.
    work_dir: Path = REPO / ".run"
    ready_timeout: float = 60.0
    # Seconds a service may take to exit after SIGTERM before SIGKILL.
    stop_timeout: float = 20.0
    # Services' SIGTERM handling: NOT_SERVING, wait drain_delay (Envoy's active health check must
    # notice first: mesh/timing.py), then stop with shutdown_grace for in-flight calls.
    drain_delay_seconds: float = TIMING.drain_delay_seconds
    shutdown_grace_seconds: float = 10.0
    drop_databases_on_close: bool = False
    # Services read what may lag from the streaming standby (infra.replica): DATABASE_REPLICA_URLS
    # names their database on it. False, or no standby (POSTGRES_REPLICA=0): the variable is empty.
    read_replica: bool = True
    python: str = sys.executable
    # Mutual TLS on every internal hop (SPEC §12); False only for the plain-text development mode.
    mesh_tls: bool = True
    # Lifetime of the workload certificates the stack issues (≤ 24 h).
    cert_ttl_seconds: float = 24 * 3600.0
    # A Prometheus (Debian's binary) scraping every process it finds through the control plane's
    # service discovery; off in test stacks unless a test asks (it costs a process and a disk).
    prometheus: bool = False
    prometheus_port: int = prom.DEFAULT_PORT
    # PgBouncer (transaction mode) in front of the primary (launcher/pgbouncer.py, README
    # "PgBouncer"): the services' DATABASE_URL goes through it, with DB_PGBOUNCER=1. PGBOUNCER=1
    # turns it on for `make up`; test stacks ask for it explicitly.
    pgbouncer: bool = field(default_factory=lambda: os.environ.get("PGBOUNCER", "") in ("1", "true", "yes", "on"))
    # Not 6432: Debian's package starts a system PgBouncer there where an init system runs.
    pgbouncer_port: int = 6439
    # Server connections per database (each service's): the primary's connection budget.
    pgbouncer_pool_size: int = 20
    pgbouncer_max_client_conn: int = 1000
    # apt-get install pgbouncer when the binary is missing (`make up`); test stacks never install.
    pgbouncer_install: bool = True
    # Processes on hosts of their own, by name ("control-plane", "envoy", "gateway", "auth-0"...);
    # the others run here on `host`. Only the launcher's own callers (the launcher, migrations,
    # Prometheus, PgBouncer) stay on this machine's loopback.
    hosts: Mapping[str, Host] = field(default_factory=dict)

    @classmethod
    def for_tests(cls, infra: Infra, keys: KeyPair, *, work_dir: Path, **overrides: Any) -> StackSettings:
        """Free ports, a unique database suffix and cache prefix, light argon2, small database
        pools, high rate limits (the gateway's, and the auth service's per-IP log-in limit),
        databases dropped. `service_env` / `gateway_env` overrides are added to the test defaults."""
        token = uuid.uuid4().hex[:10]
        overrides["service_env"] = {
            **TEST_ARGON2,
            **TEST_LOGIN_LIMITS,
            **TEST_DB_POOLS,
            **overrides.get("service_env", {}),
        }
        overrides["gateway_env"] = {**TEST_RATE_LIMITS, **overrides.get("gateway_env", {})}
        base = cls(
            infra=infra,
            keys=keys,
            gateway_port=free_port(),
            envoy_port=free_port(),
            envoy_admin_port=free_port(),
            control_plane_port=free_port(),
            control_plane_admin_port=free_port(),
            prometheus_port=free_port(),
            pgbouncer=False,
            pgbouncer_port=free_port(),
            pgbouncer_install=False,
            database_suffix=f"_t{token}",
            cache_prefix=f"test:{token}:",
            log_level="INFO",
            work_dir=work_dir,
            shutdown_grace_seconds=5.0,
            drop_databases_on_close=True,
        )
        return replace(base, **overrides)

    def instance_count(self, spec: ServiceSpec) -> int:
        return int(self.instances.get(spec.name, spec.instances))

    def timing(self) -> Timing:
        """The timings the processes will run with: the control plane's lease ttl, the services'
        drain delay, and what the environment and service_env override (mesh/timing.py)."""
        env = {**os.environ, **self.env, "DRAIN_DELAY_SECONDS": f"{self.drain_delay_seconds:g}"}
        env.update(self.service_env)
        env["LEASE_TTL_SECONDS"] = f"{self.lease_ttl_seconds:g}"
        return Timing.from_env(env)


@dataclass
class Instance:
    """One process of one service."""

    service: ServiceSpec
    index: int
    grpc_address: str
    admin_address: str
    process: ManagedProcess

    @property
    def name(self) -> str:
        return f"{self.service.name}-{self.index}"

    @property
    def running(self) -> bool:
        return self.process.running


def _split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


# Every live stack, stopped at interpreter exit if its owner forgot (or crashed before) close().
_LIVE: weakref.WeakSet[Stack] = weakref.WeakSet()


class Stack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.log_dir = settings.work_dir / "logs"
        self.envoy_config_path = settings.work_dir / f"envoy-{settings.envoy_admin_port}.json"
        self.instances: dict[str, list[Instance]] = {
            spec.name: [self._plan_instance(spec, i) for i in range(settings.instance_count(spec))]
            for spec in settings.services
        }
        self.envoy: ManagedProcess | None = None
        self.control_plane: ManagedProcess | None = None
        self.gateway: ManagedProcess | None = None
        self.prometheus: ManagedProcess | None = None
        self.pgbouncer: ManagedProcess | None = None
        self.extra: list[ManagedProcess] = []
        self.certs_dir = settings.work_dir / "certs"
        self._identities: dict[str, MeshTLS] = {}
        self._next_renewal_check = 0.0
        self._lock = threading.Lock()
        self._closed = False

    # --- addresses and settings other code reads ----------------------------------------------

    @property
    def host(self) -> str:
        return self.settings.host

    def address_of(self, process: str) -> str:
        """The address `process` listens on: its own host's, or `host`."""
        placed = self.settings.hosts.get(process)
        return placed.address if placed is not None else self.host

    def _argv(self, process: str, argv: Sequence[str]) -> list[str]:
        placed = self.settings.hosts.get(process)
        return placed.wrap(argv) if placed is not None else list(argv)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.address_of(GATEWAY)}:{self.settings.gateway_port}"

    @property
    def envoy_grpc(self) -> str:
        return f"{self.address_of(ENVOY)}:{self.settings.envoy_port}"

    @property
    def envoy_admin_url(self) -> str:
        return f"http://{self.address_of(ENVOY)}:{self.settings.envoy_admin_port}"

    @property
    def control_plane_target(self) -> str:
        return f"{self.address_of(CONTROL_PLANE)}:{self.settings.control_plane_port}"

    @property
    def control_plane_admin_url(self) -> str:
        return f"http://{self.address_of(CONTROL_PLANE)}:{self.settings.control_plane_admin_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.settings.prometheus_port}"

    @property
    def prometheus_dir(self) -> Path:
        """Prometheus's configuration and storage (kept between runs of `make up`)."""
        return self.settings.work_dir / f"prometheus-{self.settings.prometheus_port}"

    @property
    def envoy_node_id(self) -> str:
        return f"capsule-mesh-envoy-{self.settings.envoy_admin_port}"

    @property
    def redis_url(self) -> str:
        return self.settings.infra.redis_url

    @property
    def cache_prefix(self) -> str:
        return self.settings.cache_prefix

    @property
    def jwt_public_key_file(self) -> Path:
        return self.settings.keys.public

    @property
    def jwt_private_key_file(self) -> Path:
        return self.settings.keys.private

    def database_name(self, service: str) -> str:
        return by_name(service, self.settings.services).database + self.settings.database_suffix

    @property
    def database_urls(self) -> dict[str, str]:
        """Service name → SQLAlchemy URL of its database (as passed in DATABASE_URL)."""
        pg = self.settings.infra.postgres
        return {spec.name: pg.url(self.database_name(spec.name)) for spec in self.settings.services}

    @functools.cached_property
    def pgbouncer_config(self) -> pgb.PgBouncerConfig:
        return pgb.PgBouncerConfig(
            listen_host=self.host,
            port=self.settings.pgbouncer_port,
            server=self.settings.infra.postgres,
            run_dir=pgb.run_dir(self.settings.work_dir, self.settings.pgbouncer_port),
            max_client_conn=self.settings.pgbouncer_max_client_conn,
            default_pool_size=self.settings.pgbouncer_pool_size,
        )

    @property
    def service_database_urls(self) -> dict[str, str]:
        """Service name → DATABASE_URL of its instances: through PgBouncer when the stack runs
        one, else the primary's (database_urls). Migrations always go straight to the primary
        (database_urls): they create the database first (PgBouncer's `*` entry cannot reach one that
        does not exist yet), they are one short-lived client, and Alembic's connection uses
        asyncpg's defaults (statement cache, startup parameters), which PgBouncer 1.18 breaks."""
        if not self.settings.pgbouncer:
            return self.database_urls
        config = self.pgbouncer_config
        return {spec.name: config.url(self.database_name(spec.name)) for spec in self.settings.services}

    @property
    def database_replica_urls(self) -> dict[str, str]:
        """Service name → SQLAlchemy URL of its database on the standby (the same name: a physical
        copy of the whole cluster); empty without a standby or with read_replica off."""
        infra = self.settings.infra
        if not self.settings.read_replica or infra.replica is None:
            return {}
        return {spec.name: infra.replica.url(self.database_name(spec.name)) for spec in self.settings.services}

    def addresses(self, service: str) -> list[str]:
        """gRPC addresses (host:port) of the service's planned instances, running or not."""
        return [inst.grpc_address for inst in self.instances[service]]

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    # --- certificates ----------------------------------------------------------------------------

    def tls_dir(self, workload: str) -> Path:
        return self.certs_dir / workload

    def _wanted(self, workload: str) -> Wanted:
        """A workload's certificate as the stack issues it. The control plane's also names the
        address it listens on: gRPC's xDS client (the gateway) checks it by the address it dials."""
        return Wanted(workload, (self.address_of(CONTROL_PLANE), "localhost") if workload == CONTROL_PLANE else ())

    def _workloads(self) -> list[Wanted]:
        names = (*(s.name for s in self.settings.services), GATEWAY, ENVOY, CONTROL_PLANE)
        return [self._wanted(name) for name in names]

    @property
    def _cert_ttl(self) -> timedelta:
        return timedelta(seconds=self.settings.cert_ttl_seconds)

    def issue_certificates(self, workloads: Sequence[str] | None = None) -> None:
        """Issue (again) the certificates of `workloads` (default: every workload of the stack)."""
        ca = self.settings.keys.ca()
        for wanted in [self._wanted(w) for w in workloads] if workloads else self._workloads():
            ca.issue(wanted.workload, ttl=self._cert_ttl, hosts=wanted.hosts).write(self.tls_dir(wanted.workload))

    def renew_due_certificates(self) -> list[str]:
        """Issue again the certificates mesh/pki.py's renewer would (half their life gone, ...),
        the operator's included; the workloads renewed. At most one look a minute at the files."""
        now = time.monotonic()
        if not self.settings.mesh_tls or now < self._next_renewal_check:
            return []
        self._next_renewal_check = now + 60.0
        ca = self.settings.keys.ca()
        due = [workload for workload, _ in renew_due(ca, self.certs_dir, self._workloads(), ttl=self._cert_ttl)]
        if ensure_operator(ca, self.settings.keys.operator):
            due.append(OPERATOR)
        return due

    def rotate_certificates(self) -> None:
        """Every workload's certificate issued anew; each process reloads its own, and the control
        plane (SIGHUP) gives Envoy a new one over SDS."""
        self.issue_certificates()
        if self.control_plane is not None and self.control_plane.running:
            self.control_plane.send_signal(signal.SIGHUP)

    def identity(self, workload: str) -> MeshTLS | None:
        """A mesh identity to call the stack with (tests, probes): the operator's (set-up's), or
        any workload's, issued on first use. None when the stack runs in plain text."""
        if not self.settings.mesh_tls:
            return None
        if workload not in self._identities:
            if workload == OPERATOR:
                directory = self.settings.keys.operator
            else:
                directory = self.tls_dir(workload)
                if not (directory / IDENTITY_NAME).exists():
                    self.issue_certificates([workload])
            self._identities[workload] = MeshTLS(directory)
        return self._identities[workload]

    def envoy_channel(self, workload: str = OPERATOR, options: Sequence[tuple[str, Any]] = ()) -> Any:
        """A grpc.aio channel to Envoy's listener as `workload` (default: the operator)."""
        return open_channel(self.envoy_grpc, ENVOY, self.identity(workload), options)

    def channel_to(self, address: str, peer: str, workload: str = OPERATOR) -> Any:
        """A grpc.aio channel straight to one instance of `peer` (a service name) as `workload`."""
        return open_channel(address, peer, self.identity(workload))

    def health_probe(self, address: str, spec: ServiceSpec) -> GrpcHealthProbe:
        """The readiness probe of an instance of `spec` at `address`, asked as the operator."""
        return GrpcHealthProbe(address, spec.proto_service, tls=self.identity(OPERATOR), peer=spec.name)

    def grpcurl_args(self, workload: str = OPERATOR) -> list[str]:
        """grpcurl's transport flags for Envoy's listener as `workload` (-plaintext without TLS)."""
        tls = self.identity(workload)
        if tls is None:
            return ["-plaintext"]
        identity = str(tls.directory / IDENTITY_NAME)
        return [
            "-cacert",
            str(tls.directory / CA_NAME),
            "-cert",
            identity,
            "-key",
            identity,
            "-servername",
            server_name(ENVOY),
        ]

    # --- environment -----------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Each gateway writes its own xDS bootstrap (a node id of its own, this stack's control
        # plane); one inherited from the caller would win over it (gateway/xds.py).
        for name in ("GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG"):
            env.pop(name, None)
        # Page-token keys go to the services only (service_env), and only this stack's.
        for name in ("PAGE_TOKEN_KEYS", "PAGE_TOKEN_KEYS_FILE"):
            env.pop(name, None)
        env.update(
            PYTHONUNBUFFERED="1",
            LOG_LEVEL=self.settings.log_level,
            REDIS_URL=self.redis_url,
            CACHE_PREFIX=self.cache_prefix,
            JWT_PUBLIC_KEY_FILE=str(self.jwt_public_key_file),
        )
        # Each process gets its own MESH_TLS_DIR below; none inherits the caller's switches.
        for name in ("MESH_TLS_DIR", "MESH_PLAINTEXT", "MESH_CA_DIR"):
            env.pop(name, None)
        if not self.settings.mesh_tls:
            env["MESH_PLAINTEXT"] = "1"
        env.update(self.settings.env)
        return env

    def _tls_env(self, workload: str) -> dict[str, str]:
        return {"MESH_TLS_DIR": str(self.tls_dir(workload))} if self.settings.mesh_tls else {}

    def migrate_env(self, spec: ServiceSpec) -> dict[str, str]:
        env = self._base_env()
        env["DATABASE_URL"] = self.database_urls[spec.name]
        return env

    def service_env(self, instance: Instance) -> dict[str, str]:
        """The service process contract's environment for one instance."""
        spec = instance.service
        env = self._base_env()
        env.update(
            GRPC_LISTEN=instance.grpc_address,
            ADMIN_LISTEN=instance.admin_address,
            DATABASE_URL=self.service_database_urls[spec.name],
            DB_PGBOUNCER="1" if self.settings.pgbouncer else "0",
            DATABASE_REPLICA_URLS=self.database_replica_urls.get(spec.name, ""),
            SHUTDOWN_GRACE_SECONDS=f"{self.settings.shutdown_grace_seconds:g}",
            DRAIN_DELAY_SECONDS=f"{self.settings.drain_delay_seconds:g}",
            SERVICE_INSTANCE=instance.name,
            CONTROL_PLANE_TARGET=self.control_plane_target if self.settings.control_plane else "",
            # Every instance of every service signs and verifies page tokens with the same keys.
            PAGE_TOKEN_KEYS=self.settings.keys.page_token_keys(),
            # Tracing (services/common/tracing.py): the OTEL_* variables of the caller's environment
            # and of `env` come with _base_env; the name in the traces is the workload's.
            OTEL_SERVICE_NAME=spec.name,
            **self._tls_env(spec.name),
        )
        names = {s.name for s in self.settings.services}
        for target in KNOWN_TARGETS:
            env[f"{target.upper()}_TARGET"] = self.envoy_grpc if target in names else ""
        if spec.signs_tokens:
            env["JWT_PRIVATE_KEY_FILE"] = str(self.jwt_private_key_file)
        else:
            env.pop("JWT_PRIVATE_KEY_FILE", None)
        env.update(self.settings.service_env)
        return env

    def control_plane_env(self) -> dict[str, str]:
        env = self._base_env()
        env.update(
            CONTROL_PLANE_LISTEN=self.control_plane_target,
            CONTROL_PLANE_ADMIN_LISTEN=self.control_plane_admin_url.removeprefix("http://"),
            CONTROL_PLANE_ENVOY_LISTEN=self.envoy_grpc,
            CONTROL_PLANE_SERVICES=",".join(s.name for s in self.settings.services),
            LEASE_TTL_SECONDS=f"{self.settings.lease_ttl_seconds:g}",
            # What Prometheus scrapes besides the instances (which advertise their admin port when
            # they register): the processes that hold no lease. Named here, where they are started.
            CONTROL_PLANE_SCRAPE_TARGETS=",".join(self.scrape_targets()),
            **self._tls_env(CONTROL_PLANE),
        )
        if self.settings.mesh_tls:
            env["MESH_CA_DIR"] = str(self.settings.keys.mesh_ca)
            env["MESH_CERT_TTL_SECONDS"] = f"{self.settings.cert_ttl_seconds:g}"
        return env

    def scrape_targets(self) -> list[str]:
        """The gateway (its /metrics is on its HTTP port) and Envoy's admin, as the control plane's
        CONTROL_PLANE_SCRAPE_TARGETS lists them (`job=host:port[/path]`)."""
        targets = [f"envoy={self.envoy_admin_url.removeprefix('http://')}/stats/prometheus"]
        if self.settings.with_gateway:
            targets.insert(0, f"gateway={self.gateway_url.removeprefix('http://')}")
        return targets

    def gateway_env(self) -> dict[str, str]:
        """With the control plane the gateway is a proxyless xDS client (GATEWAY_XDS_SERVER: it
        balances across the instances itself, no Envoy hop) unless gateway_proxyless is off;
        without it, it calls Envoy."""
        env = self._base_env()
        env.update(
            GATEWAY_LISTEN=self.gateway_url.removeprefix("http://"),
            GATEWAY_UPSTREAM=self.envoy_grpc,
            GATEWAY_PROTO_MODULES=gateway_proto_modules(self.settings.services),
            GATEWAY_XDS_SERVER=(
                self.control_plane_target if self.settings.control_plane and self.settings.gateway_proxyless else ""
            ),
            OTEL_SERVICE_NAME=GATEWAY,
            **self._tls_env(GATEWAY),
        )
        env.update(self.settings.gateway_env)
        return env

    # --- planning and config -------------------------------------------------------------------

    def _plan_instance(self, spec: ServiceSpec, index: int) -> Instance:
        name = f"{spec.name}-{index}"
        # Ports free here; on a host of its own (a fresh namespace) every port is.
        address = self.address_of(name)
        grpc_address = f"{address}:{free_port(self.settings.host)}"
        admin_address = f"{address}:{free_port(self.settings.host)}"
        proc = ManagedProcess(
            name,
            self._argv(name, [self.settings.python, "-m", spec.module]),
            env={},  # filled at start: the environment depends on the instance
            log_path=self.log_path(f"{spec.name}-{index}"),
            ready=None,
        )
        return Instance(spec, index, grpc_address, admin_address, proc)

    def envoy_bootstrap(self) -> bootstrap_pb2.Bootstrap:
        """Envoy's bootstrap (pure: see mesh.envoy_config): only the control plane's address,
        or (control_plane=False) the static config listing every planned instance."""
        if self.settings.control_plane:
            return envoy_config.build_xds_bootstrap(
                admin=(self.address_of(ENVOY), self.settings.envoy_admin_port),
                control_plane=(self.address_of(CONTROL_PLANE), self.settings.control_plane_port),
                node_id=self.envoy_node_id,
                tls_dir=self.tls_dir(ENVOY) if self.settings.mesh_tls else None,
            )
        # Without a control plane Envoy's tracing is in its bootstrap (with one, the control plane,
        # which gets the same OTEL_* environment, serves it): spans to the processes' OTLP endpoint.
        return envoy_config.build_bootstrap(
            listen=(self.address_of(ENVOY), self.settings.envoy_port),
            admin=(self.address_of(ENVOY), self.settings.envoy_admin_port),
            endpoints={name: [_split(inst.grpc_address) for inst in insts] for name, insts in self.instances.items()},
            services=self.settings.services,
            otlp_endpoint=tracing.otlp_endpoint(self._base_env()),
        )

    # --- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Stack:
        """Start everything and return once the gateway answers. Steps that do not depend on each
        other overlap (each is mostly a Python interpreter starting): the migrations of every
        database side by side, with the control plane warming up meanwhile; Envoy and the gateway
        together once the instances serve."""
        try:
            # Before anything starts: every process would refuse (or, across processes, drain wrong).
            self.settings.timing().check()
        except TimingError as exc:
            raise StartupError(str(exc)) from None
        if self.settings.mesh_tls and not self.settings.control_plane:
            raise StartupError(
                "the static Envoy bootstrap (control_plane=False) is plain text only: set mesh_tls=False"
            )
        if self.settings.prometheus and not self.settings.control_plane:
            raise StartupError("Prometheus finds its targets through the control plane: control_plane=False has none")
        _LIVE.add(self)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.mesh_tls:
            self.issue_certificates()
        if self.settings.pgbouncer:
            self.start_pgbouncer(wait=False)
        migrations = [self._start_migration(spec) for spec in self.settings.services]
        if self.settings.control_plane:
            self.start_control_plane(wait=False)
        for migration in migrations:
            finish(migration, timeout=max(self.settings.ready_timeout, 120.0))
        if self.control_plane is not None:
            self.control_plane.wait_ready(self.settings.ready_timeout)
        if self.pgbouncer is not None:
            self.pgbouncer.wait_ready(self.settings.ready_timeout)
        # Instances before Envoy: Envoy's initialisation waits for the first health-check round,
        # so it starts with every instance healthy and balances from its first call. (Hosts that
        # turn healthy after start-up can take one more health-check interval to get traffic.)
        # Services reach each other through Envoy lazily (gRPC channels connect on first call).
        for insts in self.instances.values():
            for inst in insts:
                self._launch(inst)
        for insts in self.instances.values():
            for inst in insts:
                inst.process.wait_ready(self.settings.ready_timeout)
        self.start_envoy(wait=False)
        if self.settings.with_gateway:
            self.start_gateway(wait=False)
        assert self.envoy is not None
        self.envoy.wait_ready(self.settings.ready_timeout)
        for name, insts in self.instances.items():
            self.wait_envoy_health(name, healthy=len(insts), timeout=self.settings.ready_timeout)
        if self.settings.prometheus:
            self.start_prometheus(wait=False)
        if self.gateway is not None:
            self.gateway.wait_ready(self.settings.ready_timeout)
        if self.prometheus is not None:
            self.prometheus.wait_ready(self.settings.ready_timeout)
        return self

    def _start_migration(self, spec: ServiceSpec) -> ManagedProcess:
        name = f"{spec.name}-migrate"
        argv = [self.settings.python, "-m", spec.module, "migrate"]
        return ManagedProcess(name, argv, env=self.migrate_env(spec), log_path=self.log_path(name)).start()

    def envoy_argv(self) -> list[str]:
        envoy = Path(self.settings.python).parent / "envoy"
        return [
            str(envoy) if envoy.exists() else "envoy",
            "-c", str(self.envoy_config_path),
            # Shared-memory namespace of hot restart: distinct per Envoy so a test stack's Envoy
            # and `make up`'s (different admin ports) never collide.
            "--base-id", str(self.settings.envoy_admin_port),
            "--log-level", "warn",
            "--concurrency", str(self.settings.envoy_concurrency),
            # Stopping: close listeners and exit quickly (nothing to drain on a dev machine).
            "--drain-time-s", "1",
            # The access log reaches its file within 1 s (Envoy's default is 10 s): logs a developer
            # (or a test) reads right after a call.
            "--file-flush-interval-msec", "1000",
        ]  # fmt: skip

    def start_envoy(self, *, wait: bool = True) -> ManagedProcess:
        if self.settings.mesh_tls and self.settings.control_plane:
            # Envoy's identity for its ADS stream, read through filesystem SDS (it reloads).
            envoy_config.write_xds_sds_files(self.tls_dir(ENVOY))
        envoy_config.write_bootstrap(self.envoy_bootstrap(), self.envoy_config_path)
        self.envoy = ManagedProcess(
            "envoy",
            self._argv(ENVOY, self.envoy_argv()),
            env=self._base_env(),
            log_path=self.log_path("envoy"),
            ready=lambda: http_ok(f"{self.envoy_admin_url}/ready"),
        )
        self.envoy.start()
        if wait:
            self.envoy.wait_ready(self.settings.ready_timeout)
        return self.envoy

    def start_control_plane(self, *, wait: bool = True) -> ManagedProcess:
        """(Re)start the control plane. Ready = its first snapshot is published, i.e. after its
        warm-up (one lease ttl, during which running instances register again)."""
        self.control_plane = ManagedProcess(
            "control-plane",
            self._argv(CONTROL_PLANE, [self.settings.python, "-m", "controlplane"]),
            env=self.control_plane_env(),
            log_path=self.log_path("control-plane"),
            ready=lambda: http_ok(f"{self.control_plane_admin_url}/healthz"),
        )
        self.control_plane.start()
        if wait:
            self.control_plane.wait_ready(self.settings.ready_timeout)
        return self.control_plane

    def kill_control_plane(self) -> int | None:
        """SIGKILL the control plane (Envoy keeps its last configuration)."""
        assert self.control_plane is not None, "no control plane in this stack"
        return self.control_plane.kill()

    def control_plane_status(self) -> dict[str, Any]:
        """The control plane's /status: versions per Envoy node and what each acknowledged."""
        with urllib.request.urlopen(f"{self.control_plane_admin_url}/status", timeout=2) as response:
            return dict(json.load(response))

    def start_pgbouncer(self, *, wait: bool = True) -> ManagedProcess:
        """PgBouncer in front of the primary on pgbouncer_port (its configuration written anew)."""
        binary = pgb.find()
        if binary is None and self.settings.pgbouncer_install:
            Apt.install("pgbouncer")
            binary = pgb.find()
        if binary is None:
            raise StartupError("no pgbouncer binary: `apt-get install -y pgbouncer` (Debian's package)")
        self.pgbouncer = pgb.process(
            binary, self.pgbouncer_config, log_path=self.log_path("pgbouncer"), env=self._base_env()
        )
        self.pgbouncer.start()
        if wait:
            self.pgbouncer.wait_ready(self.settings.ready_timeout)
        return self.pgbouncer

    def start_gateway(self, *, wait: bool = True) -> ManagedProcess:
        self.gateway = ManagedProcess(
            "gateway",
            self._argv(GATEWAY, [self.settings.python, "-m", self.settings.gateway_module]),
            env=self.gateway_env(),
            log_path=self.log_path("gateway"),
            ready=lambda: http_ok(f"{self.gateway_url}/readyz"),
        )
        self.gateway.start()
        if wait:
            self.gateway.wait_ready(self.settings.ready_timeout)
        return self.gateway

    def start_prometheus(self, *, wait: bool = True) -> ManagedProcess:
        """Prometheus on prometheus_port, its configuration written anew: one job whose targets
        come from the control plane's /sd/prometheus (launcher/prometheus.py)."""
        binary = prom.find("prometheus")
        if binary is None:
            raise StartupError("no prometheus binary: `make setup` installs Debian's prometheus package")
        config = prom.write_config(self.prometheus_dir, f"{self.control_plane_admin_url}/sd/prometheus")
        self.prometheus = prom.process(
            binary,
            config,
            listen=f"{self.host}:{self.settings.prometheus_port}",
            run_dir=self.prometheus_dir,
            log_path=self.log_path("prometheus"),
            env=self._base_env(),
        )
        self.prometheus.start()
        if wait:
            self.prometheus.wait_ready(self.settings.ready_timeout)
        return self.prometheus

    def _launch(self, inst: Instance) -> None:
        inst.process.env = self.service_env(inst)
        inst.process.ready = self.health_probe(inst.grpc_address, inst.service)
        inst.process.start()

    def close(self) -> None:
        """Stop everything in reverse start order; drop the test databases if asked. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        stop_all([p for p in self.extra if p.running], timeout=self.settings.stop_timeout)
        if self.prometheus is not None:
            self.prometheus.stop(self.settings.stop_timeout)
        if self.gateway is not None:
            self.gateway.stop(self.settings.stop_timeout)
        if self.envoy is not None:
            self.envoy.stop(self.settings.stop_timeout)
        stop_all(
            [inst.process for insts in self.instances.values() for inst in insts if inst.process.running],
            timeout=self.settings.stop_timeout,
        )
        if self.control_plane is not None and self.control_plane.running:
            self.control_plane.stop(self.settings.stop_timeout)
        if self.pgbouncer is not None:
            self.pgbouncer.stop(self.settings.stop_timeout)
            run_dir = self.pgbouncer_config.run_dir
            if not run_dir.is_relative_to(self.settings.work_dir):  # the fallback outside the checkout
                shutil.rmtree(run_dir, ignore_errors=True)
        if self.settings.drop_databases_on_close:
            self.drop_databases()
        _LIVE.discard(self)

    def drop_databases(self) -> None:
        names = [self.database_name(spec.name) for spec in self.settings.services]
        drop_databases(self.settings.infra, names)

    # --- individual processes (fault tests) -------------------------------------------------------

    def instance(self, service: str, index: int) -> Instance:
        return self.instances[service][index]

    def start_instance(self, service: str, index: int | None = None, *, wait: bool = True) -> Instance:
        """(Re)start instance `index` of `service` on its own addresses; None → a new instance.

        A new instance gets free ports and registers with the control plane once SERVING, which
        puts it in Envoy's endpoint set (with control_plane=False it is reachable directly only).
        Restarting a stopped or killed instance keeps its addresses.
        """
        spec = by_name(service, self.settings.services)
        insts = self.instances[service]
        if index is None:
            inst = self._plan_instance(spec, len(insts))
            insts.append(inst)
        else:
            inst = insts[index]
            if inst.running:
                raise RuntimeError(f"{inst.name} is already running")
        self._launch(inst)
        if wait:
            inst.process.wait_ready(self.settings.ready_timeout)
        return inst

    def stop_instance(self, instance: Instance, timeout: float | None = None) -> int | None:
        """SIGTERM (graceful: drain, exit 0 expected), then SIGKILL after `timeout`. Exit code."""
        return instance.process.stop(self.settings.stop_timeout if timeout is None else timeout)

    def kill_instance(self, instance: Instance) -> int | None:
        """SIGKILL: a crash, nothing drained."""
        return instance.process.kill()

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready: Any = None,
        wait: bool = True,
    ) -> ManagedProcess:
        """Any extra process (a load generator, a second gateway...), logged to <name>.log and
        stopped with the stack. `env` is added to the stack's base environment."""
        proc = ManagedProcess(
            name, argv, env={**self._base_env(), **(env or {})}, log_path=self.log_path(name), ready=ready
        )
        self.extra.append(proc)
        proc.start()
        if wait:
            proc.wait_ready(self.settings.ready_timeout)
        return proc

    # --- what Envoy sees ---------------------------------------------------------------------------

    def envoy_health(self, service: str) -> dict[str, bool]:
        """Envoy's view of the service's cluster: "host:port" → healthy (admin /clusters)."""
        return envoy_cluster_health(self.envoy_admin_url, service)

    def wait_envoy_health(
        self,
        service: str,
        *,
        healthy: int | Sequence[str] | None = None,
        unhealthy: Sequence[str] = (),
        timeout: float = 15.0,
    ) -> dict[str, bool]:
        """Poll until Envoy sees `healthy` (a count, or exactly these addresses among the healthy
        ones) and every address in `unhealthy` as unhealthy or absent. Returns the last view."""
        deadline = time.monotonic() + timeout
        view: dict[str, bool] = {}
        while True:
            with contextlib.suppress(OSError, ValueError):
                view = self.envoy_health(service)
            good = {a for a, ok in view.items() if ok}
            if healthy is None:
                ok_healthy = True
            elif isinstance(healthy, int):
                ok_healthy = len(good) >= healthy
            else:
                ok_healthy = set(healthy) <= good
            # Unhealthy or gone: with the control plane a dead instance's lease lapses and it leaves
            # Envoy's endpoint set altogether; either way Envoy routes nothing to it.
            ok_unhealthy = all(view.get(a) is not True for a in unhealthy)
            if ok_healthy and ok_unhealthy:
                return view
            if self.envoy is not None and not self.envoy.running:
                raise self.envoy.failure("exited")
            if time.monotonic() > deadline:
                raise StartupError(
                    f"Envoy's view of {service!r} did not reach healthy={healthy} unhealthy={list(unhealthy)} "
                    f"within {timeout:.0f} s: {view}; Envoy log: {self.log_path('envoy')}"
                )
            time.sleep(0.1)

    # --- async variants (for tests on the session event loop: never block the loop) ------------------

    async def astart_instance(self, service: str, index: int | None = None, *, wait: bool = True) -> Instance:
        return await asyncio.to_thread(self.start_instance, service, index, wait=wait)

    async def astop_instance(
        self,
        instance: Instance,
        timeout: float | None = None,  # noqa: ASYNC109 (SIGTERM→SIGKILL delay)
    ) -> int | None:
        return await asyncio.to_thread(self.stop_instance, instance, timeout)

    async def akill_instance(self, instance: Instance) -> int | None:
        return await asyncio.to_thread(self.kill_instance, instance)

    async def await_envoy_health(
        self,
        service: str,
        *,
        healthy: int | Sequence[str] | None = None,
        unhealthy: Sequence[str] = (),
        timeout: float = 15.0,  # noqa: ASYNC109 (the poll runs in a thread)
    ) -> dict[str, bool]:
        return await asyncio.to_thread(
            self.wait_envoy_health, service, healthy=healthy, unhealthy=unhealthy, timeout=timeout
        )


def envoy_cluster_health(admin_url: str, cluster: str) -> dict[str, bool]:
    """Envoy's view of one cluster from its admin /clusters: "host:port" → routable.

    A host is routable when no failed_* / pending_* flag is set: failed_active_health_check,
    failed_outlier_check (ejected), pending_active_hc, ...
    """
    with urllib.request.urlopen(f"{admin_url}/clusters?format=json", timeout=2) as response:
        data = json.load(response)
    result: dict[str, bool] = {}
    for status in data.get("cluster_statuses", []):
        if status.get("name") != cluster:
            continue
        for host in status.get("host_statuses", []):
            sock = host["address"]["socket_address"]
            flags = dict(host.get("health_status", {}))
            eds = flags.pop("eds_health_status", "HEALTHY")
            result[f"{sock['address']}:{sock['port_value']}"] = eds == "HEALTHY" and not any(flags.values())
    return result


def drop_databases(infra: Infra, names: Sequence[str]) -> None:
    """DROP DATABASE … WITH (FORCE) for each name (test clean-up). Runs in its own thread and
    event loop, so it works whether or not the caller is inside a running loop."""

    async def _drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(infra.postgres.dsn("postgres"), timeout=10)
        try:
            for name in names:
                ident = '"' + name.replace('"', '""') + '"'
                await conn.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
        finally:
            await conn.close()

    errors: list[BaseException] = []

    def _run() -> None:
        try:
            asyncio.run(_drop())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=_run, name="drop-databases")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def _close_leftovers() -> None:
    for stack in list(_LIVE):
        with contextlib.suppress(Exception):
            stack.close()


atexit.register(_close_leftovers)
