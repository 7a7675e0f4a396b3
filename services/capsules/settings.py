"""The capsules service's settings: the shared ones plus its neighbours, rule bounds and the unlocker."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import ServiceSettings, env_bool, env_float, env_int, env_str


@dataclass(frozen=True)
class CapsulesSettings:
    service: ServiceSettings
    # Where the auth service (sender profiles) and the recipients service (recipients,
    # relationships) answer: Envoy's listener.
    auth_target: str
    recipients_target: str
    call_timeout_seconds: float
    # SPEC §6: unlocks_at at least 1 minute ahead at creation. TEST-ONLY when lowered: the test
    # stack sets a few seconds so capsules become ready within a test; never lower it in production.
    min_unlock_lead_seconds: int = 60
    # SPEC §13: disappear_after_open_seconds at least 60. TEST-ONLY when lowered (1 to 60): the test
    # stack sets 1 so a letter disappears within a test; never lower it in production.
    min_disappear_seconds: int = 60
    # Capsule metadata and inbox summaries (SPEC §6: 1 minute); themes (1 hour).
    capsule_cache_ttl_seconds: int = 60
    theme_cache_ttl_seconds: int = 3600
    # The background unlocker: whether serving instances run it, how often it looks when idle,
    # how many capsules one transaction takes, and the Redis stream it publishes "ready" events to.
    unlocker_enabled: bool = True
    unlocker_interval_seconds: float = 1.0
    unlocker_batch_size: int = 100
    ready_stream: str = "capsules:ready"
    # How long the per-capsule "already published" marker lives (see unlocker.py).
    ready_marker_ttl_seconds: int = 7 * 24 * 3600
    ready_stream_max_length: int = 1_000_000
    # The eraser of disappearing letters' bodies (disappearing.py): whether serving instances run
    # it, how often it looks when idle, how many bodies one transaction erases.
    eraser_enabled: bool = True
    eraser_interval_seconds: float = 1.0
    eraser_batch_size: int = 100
    # Invites (invites.py): the link handed to an invited person is this + the token; claims begun
    # and not completed this long after (a crash between the two services) are completed by the
    # resumer, which looks every interval.
    invite_url_base: str = "https://capsule-mesh.app/invites/"
    invite_resume_after_seconds: float = 30.0
    invite_resume_interval_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_disappear_seconds <= 60:
            raise ValueError("CAPSULE_MIN_DISAPPEAR_SECONDS must be 1 to 60 (SPEC §13's minimum is 60)")

    @classmethod
    def from_env(cls) -> CapsulesSettings:
        service = ServiceSettings.from_env("capsules", default_grpc_port=50053, default_admin_port=9463)
        return cls(
            service=service,
            auth_target=env_str("AUTH_TARGET", "") or "127.0.0.1:10000",
            recipients_target=env_str("RECIPIENTS_TARGET", "") or "127.0.0.1:10000",
            call_timeout_seconds=env_float("CALL_TIMEOUT_SECONDS", 3.0),
            min_unlock_lead_seconds=env_int("CAPSULE_MIN_UNLOCK_LEAD_SECONDS", 60),
            min_disappear_seconds=env_int("CAPSULE_MIN_DISAPPEAR_SECONDS", 60),
            capsule_cache_ttl_seconds=env_int("CAPSULE_CACHE_TTL_SECONDS", 60),
            theme_cache_ttl_seconds=env_int("THEME_CACHE_TTL_SECONDS", 3600),
            unlocker_enabled=env_bool("CAPSULE_UNLOCKER_ENABLED", True),
            unlocker_interval_seconds=env_float("CAPSULE_UNLOCKER_INTERVAL_SECONDS", 1.0),
            unlocker_batch_size=env_int("CAPSULE_UNLOCKER_BATCH_SIZE", 100),
            ready_stream=env_str("CAPSULE_READY_STREAM", "") or service.cache_prefix + "ready",
            ready_marker_ttl_seconds=env_int("CAPSULE_READY_MARKER_TTL_SECONDS", 7 * 24 * 3600),
            ready_stream_max_length=env_int("CAPSULE_READY_STREAM_MAX_LENGTH", 1_000_000),
            eraser_enabled=env_bool("CAPSULE_ERASER_ENABLED", True),
            eraser_interval_seconds=env_float("CAPSULE_ERASER_INTERVAL_SECONDS", 1.0),
            eraser_batch_size=env_int("CAPSULE_ERASER_BATCH_SIZE", 100),
            invite_url_base=env_str("CAPSULE_INVITE_URL_BASE", "") or "https://capsule-mesh.app/invites/",
            invite_resume_after_seconds=env_float("CAPSULE_INVITE_RESUME_AFTER_SECONDS", 30.0),
            invite_resume_interval_seconds=env_float("CAPSULE_INVITE_RESUME_INTERVAL_SECONDS", 5.0),
        )
