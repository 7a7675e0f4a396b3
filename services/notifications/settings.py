"""The notifications service's settings: the shared ones plus where auth answers."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import ServiceSettings, env_float, env_str


@dataclass(frozen=True)
class NotificationsSettings:
    service: ServiceSettings
    # Where the auth service answers (Envoy's listener): GetUsers, whether a caller's account exists.
    auth_target: str
    auth_timeout_seconds: float
    # (The consumers' settings are every service's: ServiceSettings.consumers, STREAM_*.)

    @classmethod
    def from_env(cls) -> NotificationsSettings:
        service = ServiceSettings.from_env("notifications", default_grpc_port=50054, default_admin_port=9464)
        return cls(
            service=service,
            auth_target=env_str("AUTH_TARGET", "") or "127.0.0.1:10000",
            auth_timeout_seconds=env_float("AUTH_TIMEOUT_SECONDS", 3.0),
        )
