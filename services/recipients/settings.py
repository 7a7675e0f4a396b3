"""The recipients service's settings: the shared ones plus where auth answers and cache lifetimes."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import ServiceSettings, env_float, env_int, env_str


@dataclass(frozen=True)
class RecipientsSettings:
    service: ServiceSettings
    # Where the auth service answers (Envoy's listener): GetUsers for existence and profiles.
    auth_target: str
    auth_timeout_seconds: float
    # Relationship and block-list answers (SPEC §5: 2 minutes, invalidated on change).
    relationship_cache_ttl_seconds: int = 120

    @classmethod
    def from_env(cls) -> RecipientsSettings:
        return cls(
            service=ServiceSettings.from_env("recipients", default_grpc_port=50052, default_admin_port=9462),
            auth_target=env_str("AUTH_TARGET", "") or "127.0.0.1:10000",
            auth_timeout_seconds=env_float("AUTH_TIMEOUT_SECONDS", 3.0),
            relationship_cache_ttl_seconds=env_int("RELATIONSHIP_CACHE_TTL_SECONDS", 120),
        )
