"""The auth service's settings: the shared ones plus signing keys, token lifetimes and hashing cost."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.auth.login_limits import LoginLimitSettings
from services.common.addresses import parse_networks
from services.common.settings import ServiceSettings, env_float, env_int, env_str

# The mesh's own hops (Envoy, the gateway) live on private networks; their x-forwarded-for names the
# client. A caller from elsewhere is keyed by its own address.
DEFAULT_TRUSTED_PROXIES = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"


@dataclass(frozen=True)
class AuthSettings:
    service: ServiceSettings
    jwt_private_key_file: str
    access_token_ttl_seconds: int
    refresh_token_ttl_seconds: int
    # argon2id cost; the defaults are argon2-cffi's RFC 9106 "low memory" profile. Tests lower them.
    argon2_time_cost: int
    argon2_memory_kib: int
    argon2_parallelism: int
    # Where the recipients service answers (through Envoy); empty: nobody is blocked yet.
    recipients_target: str
    profile_cache_ttl_seconds: int = 300
    search_cache_ttl_seconds: int = 30
    # How long the refresh tokens of a session that ended (its last token expired or revoked) are
    # kept before the purge removes them all (storage.refresh_tokens_purge).
    refresh_token_retention_seconds: int = 7 * 24 * 3600
    # Account deletion (deletion.py): how long after a deletion every service erases the account a
    # second time. Longer than any call can last (the gateway's deadline, 10 s, and a session's
    # revocation, ≤ 2 s), so that what a call in flight at the deletion wrote is erased too.
    # TEST-ONLY when lowered below that.
    account_deletion_settle_seconds: float = 30.0
    # Log-in failure limits (login_limits.py): per account, per client IP, in one window.
    login_limits: LoginLimitSettings = field(default_factory=LoginLimitSettings)

    @classmethod
    def from_env(cls) -> AuthSettings:
        return cls(
            service=ServiceSettings.from_env("auth", default_grpc_port=50051, default_admin_port=9461),
            jwt_private_key_file=env_str("JWT_PRIVATE_KEY_FILE", ".run/keys/jwt-private.pem"),
            access_token_ttl_seconds=env_int("ACCESS_TOKEN_TTL_SECONDS", 15 * 60),
            refresh_token_ttl_seconds=env_int("REFRESH_TOKEN_TTL_SECONDS", 30 * 24 * 3600),
            argon2_time_cost=env_int("ARGON2_TIME_COST", 3),
            argon2_memory_kib=env_int("ARGON2_MEMORY_KIB", 64 * 1024),
            argon2_parallelism=env_int("ARGON2_PARALLELISM", 4),
            recipients_target=env_str("RECIPIENTS_TARGET", ""),
            refresh_token_retention_seconds=env_int("REFRESH_TOKEN_RETENTION_SECONDS", 7 * 24 * 3600),
            account_deletion_settle_seconds=env_float("ACCOUNT_DELETION_SETTLE_SECONDS", 30.0),
            login_limits=LoginLimitSettings(
                account_failures=env_int("LOGIN_FAILURES_PER_ACCOUNT", 10),
                ip_failures=env_int("LOGIN_FAILURES_PER_IP", 100),
                window_seconds=env_int("LOGIN_FAILURE_WINDOW_SECONDS", 15 * 60),
                trusted_proxies=parse_networks(
                    env_str("AUTH_TRUSTED_PROXIES", DEFAULT_TRUSTED_PROXIES), "AUTH_TRUSTED_PROXIES"
                ),
            ),
        )
