"""The notifications service's settings: the shared ones plus where auth answers and the consumers'."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from services.common.settings import ServiceSettings, env_bool, env_float, env_int, env_str


@dataclass(frozen=True)
class NotificationsSettings:
    service: ServiceSettings
    # Where the auth service answers (Envoy's listener): GetUsers, whether a caller's account exists.
    auth_target: str
    auth_timeout_seconds: float
    # The consumers (consumers.py): whether serving instances run them, this instance's consumer
    # name in the group (stable across restarts, so a restarted instance finds its own pending
    # entries), entries per batch, how long one XREADGROUP blocks, and how long an entry may stay
    # unacknowledged by a consumer before another takes it over (XAUTOCLAIM). TEST-ONLY when
    # lowered far: the test stack sets 1 s so a "dead consumer" is taken over within a test; in
    # production keep it well above the time a batch takes.
    consumers_enabled: bool = True
    consumer_name: str = ""
    batch_size: int = 100
    block_ms: int = 1000
    claim_idle_ms: int = 30_000

    @classmethod
    def from_env(cls) -> NotificationsSettings:
        service = ServiceSettings.from_env("notifications", default_grpc_port=50054, default_admin_port=9464)
        return cls(
            service=service,
            auth_target=env_str("AUTH_TARGET", "") or "127.0.0.1:10000",
            auth_timeout_seconds=env_float("AUTH_TIMEOUT_SECONDS", 3.0),
            consumers_enabled=env_bool("NOTIFICATIONS_CONSUMERS_ENABLED", True),
            consumer_name=env_str("NOTIFICATIONS_CONSUMER_NAME", "")
            or service.instance_name
            or f"{socket.gethostname()}-{os.getpid()}",
            batch_size=env_int("NOTIFICATIONS_BATCH_SIZE", 100),
            block_ms=env_int("NOTIFICATIONS_BLOCK_MS", 1000),
            claim_idle_ms=env_int("NOTIFICATIONS_CLAIM_IDLE_MS", 30_000),
        )
