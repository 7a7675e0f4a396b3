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
LOG_LEVEL                        root log level (default info; debug adds one line per request)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

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
    log_level: str = "info"

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
            log_level=env.get("LOG_LEVEL") or "info",
        )

    def upstream_for(self, service_full_name: str) -> str:
        """The target of one service: its GATEWAY_UPSTREAM_<SERVICE> override, else the default."""
        key = service_full_name.replace(".", "_").upper()
        return self.upstream_overrides.get(key, self.upstream)


def _host_port(name: str, raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"setting {name}={raw!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


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
