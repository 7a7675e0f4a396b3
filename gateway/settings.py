"""The gateway's settings, read from the environment once at start-up.

GATEWAY_LISTEN                   host:port to serve HTTP on (default 127.0.0.1:8080)
GATEWAY_PROTO_MODULES            comma-separated generated modules whose annotated services are
                                 exposed (default capsule.auth.v1.auth_pb2)
GATEWAY_UPSTREAM                 gRPC target of every service (default 127.0.0.1:10000, Envoy)
GATEWAY_UPSTREAM_<SERVICE>       target of one service, e.g. GATEWAY_UPSTREAM_CAPSULE_AUTH_V1_AUTHSERVICE
GATEWAY_CALL_TIMEOUT_SECONDS     deadline of every upstream call (default 10)
GATEWAY_READY_TIMEOUT_SECONDS    how long /readyz waits for the channels (default 1)
GATEWAY_MAX_BODY_BYTES           largest accepted request body (default 262144 = 256 KiB)
GATEWAY_SHUTDOWN_GRACE_SECONDS   how long SIGTERM waits for in-flight requests (default 20)

Protocol limits (connections.py; SPEC §7):
GATEWAY_MAX_CONNECTIONS          open HTTP connections per gateway process; past it a new one is answered
                                 503 and closed at once (default 13000: 128 MiB of held connections at
                                 10 KiB each, see connections.py; keep it below the open-file limit)
GATEWAY_MAX_HEADER_BYTES         largest request head: target + each header's name, value and 4 bytes
                                 (default 16384 = 16 KiB); larger is 431
GATEWAY_MAX_HEADERS              most request headers (default 100); more is 431
GATEWAY_HEADER_TIMEOUT_SECONDS   a connection whose request head is not complete this long after it opened
                                 or after the head's first bytes is closed (408 if part came; default 10)
GATEWAY_KEEPALIVE_TIMEOUT_SECONDS  an idle keep-alive connection is closed after this (default 5)
LOG_LEVEL                        root log level (default info; debug adds one line per request)

Rate limiting (ratelimit.py) and HTTP caching (httpcache.py):
GATEWAY_RATELIMIT_ENABLED        0 turns the limiter off (benchmarks; default 1)
GATEWAY_RATELIMIT_IP             unauthenticated calls per client IP: <count>[/<seconds>] (default 60/60)
GATEWAY_RATELIMIT_USER           authenticated calls per user (default 600/60)
GATEWAY_RATELIMIT_LOGIN          log-in attempts per client IP and account (default 10/60)
GATEWAY_RATELIMIT_REDIS_TIMEOUT_MS  longest wait for Redis before deciding locally (default 100)
GATEWAY_RATELIMIT_BACKOFF_SECONDS   how long Redis is not asked after a failure (default 1)
GATEWAY_RATELIMIT_LEASE_MAX      most cells of one key a gateway leases from Redis at once (default 32;
                                 also capped at 1/16 of the limit); 1 turns leasing off: one Redis
                                 round trip per decision
GATEWAY_RATELIMIT_LEASE_SECONDS  lifetime of a lease: unused cells are void after it (default 1)
GATEWAY_TRUSTED_PROXIES          CIDRs whose X-Forwarded-For is believed (default none)
GATEWAY_CACHE_PRIVATE_MAX_AGE    max-age of GET answers whose method declares no http_cache (default 0)
REDIS_URL, CACHE_PREFIX          the limiter's Redis and key prefix (keys: <prefix>rl:...)
JWT_PUBLIC_KEY_FILE, JWT_ISSUER, JWT_AUDIENCE
                                 to key authenticated calls by user (unset: every call by IP)

Proxyless upstream (xds.py):
GATEWAY_XDS_SERVER               host:port of the mesh's xDS control plane. Set: every service without
                                 a GATEWAY_UPSTREAM_<SERVICE> override is called over gRPC's own
                                 xDS client (target xds:///<proto package>, e.g. xds:///capsule.auth.v1),
                                 balanced by the gateway itself across the registered instances:
                                 no Envoy hop. Unset (default; the launcher's CONTROL_PLANE=0):
                                 GATEWAY_UPSTREAM (Envoy). The gateway writes its own xDS bootstrap
                                 (GRPC_XDS_BOOTSTRAP_CONFIG, node id unique per process) unless
                                 GRPC_XDS_BOOTSTRAP or GRPC_XDS_BOOTSTRAP_CONFIG is already set.
GATEWAY_XDS_NODE_ZONE            the locality zone reported in the bootstrap's node (default empty)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.connections import DEFAULT_MAX_CONNECTIONS
from mesh.pki import ENVOY
from mesh.topology import SERVICES
from services.common.addresses import IpNetwork, parse_networks

DEFAULT_PROTO_MODULES = ("capsule.auth.v1.auth_pb2",)
UPSTREAM_OVERRIDE_PREFIX = "GATEWAY_UPSTREAM_"


@dataclass(frozen=True)
class Settings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    proto_modules: tuple[str, ...] = DEFAULT_PROTO_MODULES
    upstream: str = "127.0.0.1:10000"
    # Per-service targets, keyed by the service's full proto name (capsule.auth.v1.AuthService).
    upstream_overrides: Mapping[str, str] = field(default_factory=dict)
    call_timeout_seconds: float = 10.0
    ready_timeout_seconds: float = 1.0
    max_body_bytes: int = 256 * 1024
    shutdown_grace_seconds: float = 20.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_seconds: float = 10.0
    keepalive_timeout_seconds: float = 5.0
    log_level: str = "info"
    ratelimit_enabled: bool = True
    ratelimit_ip: tuple[int, float] = (60, 60.0)  # (count, period in seconds)
    ratelimit_user: tuple[int, float] = (600, 60.0)
    ratelimit_login: tuple[int, float] = (10, 60.0)
    ratelimit_redis_timeout_seconds: float = 0.1
    ratelimit_backoff_seconds: float = 1.0
    # Parsed once, here: the proxy and the rate limiter resolve client addresses with them.
    trusted_proxies: tuple[IpNetwork, ...] = ()
    cache_private_max_age: int = 0
    redis_url: str = "redis://127.0.0.1:6379/0"
    cache_prefix: str = ""
    jwt_public_key_file: str = ""
    jwt_issuer: str = "capsule-mesh/auth"
    jwt_audience: str = "capsule-mesh"
    ratelimit_lease_max: int = 32
    ratelimit_lease_seconds: float = 1.0
    xds_server: str = ""
    xds_node_zone: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        host, port = _host_port("GATEWAY_LISTEN", env.get("GATEWAY_LISTEN") or "127.0.0.1:8080")
        modules = tuple(m.strip() for m in env.get("GATEWAY_PROTO_MODULES", "").split(",") if m.strip())
        return cls(
            listen_host=host,
            listen_port=port,
            proto_modules=modules or DEFAULT_PROTO_MODULES,
            upstream=env.get("GATEWAY_UPSTREAM") or "127.0.0.1:10000",
            upstream_overrides={
                key.removeprefix(UPSTREAM_OVERRIDE_PREFIX): value
                for key, value in env.items()
                if key.startswith(UPSTREAM_OVERRIDE_PREFIX) and value
            },
            call_timeout_seconds=_positive("GATEWAY_CALL_TIMEOUT_SECONDS", env, 10.0),
            ready_timeout_seconds=_positive("GATEWAY_READY_TIMEOUT_SECONDS", env, 1.0),
            max_body_bytes=int(_positive("GATEWAY_MAX_BODY_BYTES", env, 256 * 1024)),
            shutdown_grace_seconds=_positive("GATEWAY_SHUTDOWN_GRACE_SECONDS", env, 20.0),
            max_connections=_whole("GATEWAY_MAX_CONNECTIONS", env, DEFAULT_MAX_CONNECTIONS),
            max_header_bytes=_whole("GATEWAY_MAX_HEADER_BYTES", env, 16 * 1024),
            max_headers=_whole("GATEWAY_MAX_HEADERS", env, 100),
            header_timeout_seconds=_positive("GATEWAY_HEADER_TIMEOUT_SECONDS", env, 10.0),
            keepalive_timeout_seconds=_positive("GATEWAY_KEEPALIVE_TIMEOUT_SECONDS", env, 5.0),
            log_level=env.get("LOG_LEVEL") or "info",
            ratelimit_enabled=(env.get("GATEWAY_RATELIMIT_ENABLED") or "1").strip().lower() not in ("0", "false", "no"),
            ratelimit_ip=_rate("GATEWAY_RATELIMIT_IP", env, (60, 60.0)),
            ratelimit_user=_rate("GATEWAY_RATELIMIT_USER", env, (600, 60.0)),
            ratelimit_login=_rate("GATEWAY_RATELIMIT_LOGIN", env, (10, 60.0)),
            ratelimit_redis_timeout_seconds=_positive("GATEWAY_RATELIMIT_REDIS_TIMEOUT_MS", env, 100.0) / 1000,
            ratelimit_backoff_seconds=_positive("GATEWAY_RATELIMIT_BACKOFF_SECONDS", env, 1.0),
            trusted_proxies=parse_networks(env.get("GATEWAY_TRUSTED_PROXIES") or "", "GATEWAY_TRUSTED_PROXIES"),
            cache_private_max_age=int(env.get("GATEWAY_CACHE_PRIVATE_MAX_AGE") or 0),
            redis_url=env.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
            cache_prefix=env.get("CACHE_PREFIX") or "",
            jwt_public_key_file=env.get("JWT_PUBLIC_KEY_FILE") or "",
            jwt_issuer=env.get("JWT_ISSUER") or "capsule-mesh/auth",
            jwt_audience=env.get("JWT_AUDIENCE") or "capsule-mesh",
            ratelimit_lease_max=_whole("GATEWAY_RATELIMIT_LEASE_MAX", env, 32),
            ratelimit_lease_seconds=_positive("GATEWAY_RATELIMIT_LEASE_SECONDS", env, 1.0),
            xds_server=_optional_host_port("GATEWAY_XDS_SERVER", env),
            xds_node_zone=env.get("GATEWAY_XDS_NODE_ZONE") or "",
        )

    def upstream_for(self, service_full_name: str) -> str:
        """The target of one service: its GATEWAY_UPSTREAM_<SERVICE> override, else its xds target
        (GATEWAY_XDS_SERVER set), else the default (GATEWAY_UPSTREAM, Envoy)."""
        key = service_full_name.replace(".", "_").upper()
        if key in self.upstream_overrides:
            return self.upstream_overrides[key]
        if self.xds_server:
            # One listener per proto package on the control plane (controlplane/proxyless.py).
            return f"xds:///{service_full_name.rpartition('.')[0]}"
        return self.upstream

    def upstream_peer(self, service_full_name: str) -> str:
        """The workload whose certificate the service's upstream must present: Envoy's for the
        default upstream, the service's own when the gateway dials it directly (an override or
        xds)."""
        if self.upstream_for(service_full_name) == self.upstream:
            return ENVOY
        path = f"/{service_full_name}/"
        for spec in SERVICES:
            if any(path.startswith(prefix) for prefix in spec.route_prefixes):
                return spec.name
        return ENVOY


def _host_port(name: str, raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"setting {name}={raw!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def _optional_host_port(name: str, env: Mapping[str, str]) -> str:
    raw = (env.get(name) or "").strip()
    if raw:
        _host_port(name, raw)  # validate
    return raw


def _positive(name: str, env: Mapping[str, str], default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"setting {name}={raw!r} is not a number") from None
    if value <= 0:
        raise SystemExit(f"setting {name}={raw!r} must be positive")
    return value


def _whole(name: str, env: Mapping[str, str], default: int) -> int:
    value = _positive(name, env, default)
    if value != int(value):
        raise SystemExit(f"setting {name}={env.get(name)!r} is not a whole number")
    return int(value)


def _rate(name: str, env: Mapping[str, str], default: tuple[int, float]) -> tuple[int, float]:
    """`<count>` (per 60 s) or `<count>/<seconds>`."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    count, _, seconds = raw.partition("/")
    try:
        parsed = (int(count), float(seconds) if seconds else 60.0)
    except ValueError:
        raise SystemExit(f"setting {name}={raw!r} is not <count>[/<seconds>]") from None
    if parsed[0] <= 0 or parsed[1] <= 0:
        raise SystemExit(f"setting {name}={raw!r} must be positive")
    return parsed
