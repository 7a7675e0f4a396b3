"""Push configuration from the environment.

PUSH_PROVIDER           which real providers are on: "log" (default: every push only logged),
                        "fcm", "apns" or "fcm,apns"; a platform whose provider is not on is logged
PUSH_PROVIDER_FCM       per platform, overriding PUSH_PROVIDER: "log" or "fcm"
PUSH_PROVIDER_APNS      per platform: "log" or "apns"
FCM_ENDPOINT            default https://fcm.googleapis.com (a local fake in tests)
FCM_PROJECT_ID          the Firebase project
FCM_ACCESS_TOKEN_FILE   a file holding the OAuth 2 access token (kept fresh by the platform)
APNS_ENDPOINT           default https://api.push.apple.com (api.sandbox.push.apple.com for
                        development builds)
APNS_TOPIC              the app's bundle id
APNS_KEY_FILE           the .p8 signing key (EC P-256, PEM)
APNS_KEY_ID, APNS_TEAM_ID  the key's id and the team's id (the provider token's kid and iss)
PUSH_SENDER_ENABLED     whether serving instances run the sender job (default 1)
PUSH_BATCH_SIZE, PUSH_MAX_ATTEMPTS, PUSH_INTERVAL_SECONDS, PUSH_LEASE_SECONDS,
PUSH_BACKOFF_BASE_SECONDS, PUSH_BACKOFF_CAP_SECONDS   the sender's (sender.py)
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import env_bool, env_float, env_int, env_str
from services.notifications.push.apns import ApnsProvider, ProviderToken
from services.notifications.push.base import PushProvider
from services.notifications.push.fcm import FcmProvider, TokenFile
from services.notifications.push.log import LogProvider

PLATFORMS = ("fcm", "apns")


@dataclass(frozen=True)
class SenderSettings:
    enabled: bool = True
    batch_size: int = 100
    max_attempts: int = 8
    interval_seconds: float = 1.0
    lease_seconds: float = 60.0
    backoff_base_seconds: float = 2.0
    backoff_cap_seconds: float = 3600.0

    @classmethod
    def from_env(cls) -> SenderSettings:
        return cls(
            enabled=env_bool("PUSH_SENDER_ENABLED", True),
            batch_size=env_int("PUSH_BATCH_SIZE", 100),
            max_attempts=env_int("PUSH_MAX_ATTEMPTS", 8),
            interval_seconds=env_float("PUSH_INTERVAL_SECONDS", 1.0),
            lease_seconds=env_float("PUSH_LEASE_SECONDS", 60.0),
            backoff_base_seconds=env_float("PUSH_BACKOFF_BASE_SECONDS", 2.0),
            backoff_cap_seconds=env_float("PUSH_BACKOFF_CAP_SECONDS", 3600.0),
        )


def chosen(platform: str) -> str:
    """The provider configured for a platform: its own variable, else PUSH_PROVIDER's list."""
    own = env_str(f"PUSH_PROVIDER_{platform.upper()}", "").strip().lower()
    if own:
        if own not in ("log", platform):
            raise ValueError(f"PUSH_PROVIDER_{platform.upper()} must be log or {platform}, not {own!r}")
        return own
    enabled = {name.strip().lower() for name in env_str("PUSH_PROVIDER", "log").split(",") if name.strip()}
    unknown = enabled - {"log", *PLATFORMS}
    if unknown:
        raise ValueError(f"PUSH_PROVIDER names unknown providers: {sorted(unknown)}")
    return platform if platform in enabled else "log"


def providers_from_env() -> dict[str, PushProvider]:
    """platform → its provider. A real provider missing its settings fails at start, not at the
    first push."""
    log = LogProvider()
    out: dict[str, PushProvider] = {}
    for platform in PLATFORMS:
        name = chosen(platform)
        if name == "fcm":
            out[platform] = FcmProvider(
                project=_required("FCM_PROJECT_ID"),
                access_token=TokenFile(_required("FCM_ACCESS_TOKEN_FILE")),
                endpoint=env_str("FCM_ENDPOINT", "") or "https://fcm.googleapis.com",
            )
        elif name == "apns":
            out[platform] = ApnsProvider(
                topic=_required("APNS_TOPIC"),
                token=ProviderToken.from_file(
                    _required("APNS_KEY_FILE"), key_id=_required("APNS_KEY_ID"), team_id=_required("APNS_TEAM_ID")
                ),
                endpoint=env_str("APNS_ENDPOINT", "") or "https://api.push.apple.com",
            )
        else:
            out[platform] = log
    return out


def _required(name: str) -> str:
    value = env_str(name, "").strip()
    if not value:
        raise ValueError(f"{name} is required by the push provider configured")
    return value
