"""Settings read from the environment once, at start-up, into frozen dataclasses."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

from mesh.timing import TIMING, Timing, TimingError
from services.common.pagination import PageTokenKeys


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"setting {name}={raw!r} is not an integer") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"setting {name}={raw!r} is not a number") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"setting {name}={raw!r} is not a boolean")


def env_list(name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in os.environ.get(name, "").split(",") if part.strip())


def page_token_keys() -> PageTokenKeys:
    """The keys page tokens are signed with: PAGE_TOKEN_KEYS="kid1:secret1,kid2:secret2" (the first
    signs, all verify: rotate by putting a new key first and dropping the oldest later), or
    PAGE_TOKEN_KEYS_FILE naming a file that holds that text. There is no default: a service without
    keys refuses to start (`make setup` and the launcher generate development keys)."""
    raw = os.environ.get("PAGE_TOKEN_KEYS", "")
    source = "PAGE_TOKEN_KEYS"
    if not raw.strip() and os.environ.get("PAGE_TOKEN_KEYS_FILE"):
        source = os.environ["PAGE_TOKEN_KEYS_FILE"]
        try:
            raw = Path(source).read_text()
        except OSError as exc:
            raise SystemExit(f"PAGE_TOKEN_KEYS_FILE {source!r} cannot be read: {exc.strerror}") from None
    if not raw.strip():
        raise SystemExit(
            "PAGE_TOKEN_KEYS is not set: page tokens are signed with it "
            '("kid1:secret1,kid2:secret2", the first key signs; or PAGE_TOKEN_KEYS_FILE)'
        )
    try:
        return PageTokenKeys.parse(raw)
    except ValueError as exc:  # the message names the key id, never the secret
        raise SystemExit(f"{source}: {exc}") from None


def service_timing() -> Timing:
    """The mesh's timings with this process's overrides (DRAIN_DELAY_SECONDS,
    DEREGISTERED_DRAIN_SECONDS), every relation of mesh/timing.py checked: a drain delay too short
    for Envoy's health checks to notice NOT_SERVING refuses to start, naming the relation."""
    try:
        return Timing.from_env().check()
    except TimingError as exc:
        raise SystemExit(str(exc)) from None


@dataclass(frozen=True)
class DatabaseSettings:
    """One service's database: a primary, optional read replicas, and the pool of SPEC §9."""

    url: str
    replica_urls: tuple[str, ...] = ()
    pool_size: int = 20
    max_overflow: int = 30
    pool_timeout_seconds: float = 30.0
    pool_recycle_seconds: int = 1800
    pool_pre_ping: bool = True
    # With pre-ping on, a connection is pinged before use only when it sat idle in the pool at
    # least this long: a connection used milliseconds ago is known to be alive, and a ping on
    # every checkout is a round trip per request (0 = ping on every checkout, SQLAlchemy's way).
    pool_pre_ping_idle_seconds: float = 5.0
    # A primary that is down must fail writes fast (SPEC §10), not after asyncpg's 60 s default.
    connect_timeout_seconds: float = 3.0
    statement_timeout_ms: int = 10_000
    # A transaction left idle (its holder waiting on something else) is ended by Postgres after
    # this long, releasing its locks: the backstop behind every bounded wait inside a transaction.
    idle_in_transaction_timeout_ms: int = 30_000
    # Read replicas (services/common/replicas.py): each its own pool of this size (+ max_overflow).
    replica_pool_size: int = 20
    # A replica further behind than this (or down) is skipped until it catches up.
    replica_max_lag_seconds: float = 2.0
    replica_probe_seconds: float = 0.5
    # A read a replica has not answered in this time is run on the primary instead.
    replica_read_timeout_seconds: float = 2.0
    # DB_PGBOUNCER=1: the primary URL is a PgBouncer in transaction mode (older than 1.21, no
    # prepared statements of its own): no statement caches, unique statement names, reads in a
    # transaction, no session settings at connect (services/common/db.py, README "PgBouncer").
    # Replicas are still reached directly. Off: asyncpg's statement cache, autocommit reads.
    pgbouncer: bool = False

    @property
    def watermark_seconds(self) -> float:
        """How long a write's WAL position is remembered for its users' reads: past the time any
        replica within the lag bound (as the last probes saw it) has replayed it."""
        return self.replica_max_lag_seconds + 4 * self.replica_probe_seconds + 5.0

    def for_replica(self) -> DatabaseSettings:
        # Replicas are reached directly, never through the primary's PgBouncer.
        return replace(self, pool_size=self.replica_pool_size, pgbouncer=False)

    @classmethod
    def from_env(cls, default_database: str) -> DatabaseSettings:
        return cls(
            url=env_str("DATABASE_URL", f"postgresql+asyncpg://postgres@127.0.0.1:5432/{default_database}"),
            replica_urls=env_list("DATABASE_REPLICA_URLS"),
            pool_size=env_int("DB_POOL_SIZE", 20),
            max_overflow=env_int("DB_MAX_OVERFLOW", 30),
            pool_timeout_seconds=env_float("DB_POOL_TIMEOUT_SECONDS", 30.0),
            pool_recycle_seconds=env_int("DB_POOL_RECYCLE_SECONDS", 1800),
            pool_pre_ping=env_bool("DB_POOL_PRE_PING", True),
            pool_pre_ping_idle_seconds=env_float("DB_POOL_PRE_PING_IDLE_SECONDS", 5.0),
            connect_timeout_seconds=env_float("DB_CONNECT_TIMEOUT_SECONDS", 3.0),
            statement_timeout_ms=env_int("DB_STATEMENT_TIMEOUT_MS", 10_000),
            idle_in_transaction_timeout_ms=env_int("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", 30_000),
            replica_pool_size=env_int("DB_REPLICA_POOL_SIZE", env_int("DB_POOL_SIZE", 20)),
            replica_max_lag_seconds=env_float("DB_REPLICA_MAX_LAG_SECONDS", 2.0),
            replica_probe_seconds=env_float("DB_REPLICA_PROBE_SECONDS", 0.5),
            replica_read_timeout_seconds=env_float("DB_REPLICA_READ_TIMEOUT_SECONDS", 2.0),
            pgbouncer=env_bool("DB_PGBOUNCER", False),
        )


@dataclass(frozen=True)
class PurgeSettings:
    """The housekeeping purge every service runs (services/common/purge.py)."""

    enabled: bool = True
    # Time between passes (each instance, ±10 %).
    interval_seconds: float = 600.0
    # Rows per DELETE (one short transaction, its rows locked only for that statement).
    batch_size: int = 500
    # Rows per table per pass at most: a backlog is worked off over several passes.
    max_rows_per_run: int = 50_000

    @classmethod
    def from_env(cls) -> PurgeSettings:
        return cls(
            enabled=env_bool("PURGE_ENABLED", True),
            interval_seconds=env_float("PURGE_INTERVAL_SECONDS", 600.0),
            batch_size=env_int("PURGE_BATCH_SIZE", 500),
            max_rows_per_run=env_int("PURGE_MAX_ROWS_PER_RUN", 50_000),
        )


@dataclass(frozen=True)
class OutboxSettings:
    """The transactional outbox's relay and purge (services/common/outbox.py). Here, beside the
    purge's settings, rather than in each service's settings: every producing service runs the same
    relay with the same knobs (all four services: events, and the account-deletion saga's steps),
    and the environment is already per process."""

    # Every serving instance relays (SKIP LOCKED makes several safe); off: rows wait in the table.
    relay_enabled: bool = True
    # The relay's poll when the outbox is drained (a full batch goes on at once, and a commit in this
    # process wakes it at once): how soon rows left by an instance that died before relaying them,
    # and scheduled events, are published.
    relay_interval_seconds: float = 2.0
    # Rows per relay transaction (locked while they are XADDed, then marked published).
    batch_size: int = 100
    # XADD MAXLEN ~ this: only keeps a stalled consumer from filling Redis.
    stream_max_length: int = 1_000_000
    # Published rows are purged after this many days (they only serve an operator's look-back).
    retention_days: int = 7
    # Redis away: the pause after a failed pass doubles from the interval up to this.
    relay_max_backoff_seconds: float = 30.0

    @classmethod
    def from_env(cls) -> OutboxSettings:
        return cls(
            relay_enabled=env_bool("OUTBOX_RELAY_ENABLED", True),
            relay_interval_seconds=env_float("OUTBOX_RELAY_INTERVAL_SECONDS", 2.0),
            batch_size=env_int("OUTBOX_BATCH_SIZE", 100),
            stream_max_length=env_int("OUTBOX_STREAM_MAX_LENGTH", 1_000_000),
            retention_days=env_int("OUTBOX_RETENTION_DAYS", 7),
            relay_max_backoff_seconds=env_float("OUTBOX_RELAY_MAX_BACKOFF_SECONDS", 30.0),
        )


@dataclass(frozen=True)
class ConsumerSettings:
    """The Redis stream consumers of a service (services/common/streams.py): the notifications
    service's, and every service's share of the account-deletion saga. Here, beside the outbox's:
    the same knobs for every consumer, and the environment is already per process."""

    # Whether serving instances run their consumers (off: entries wait in the streams).
    enabled: bool = True
    # This instance's consumer name in each group: stable across restarts, so a restarted
    # instance finds the entries it read and never acknowledged.
    name: str = ""
    batch_size: int = 100
    # How long one XREADGROUP waits for new entries.
    block_ms: int = 1000
    # How long an entry may stay unacknowledged before another consumer takes it over
    # (XAUTOCLAIM). TEST-ONLY when lowered far (the test stacks set 1 s so that a "dead
    # consumer" is taken over within a test); in production keep it well above a batch's time.
    claim_idle_ms: int = 30_000

    @classmethod
    def from_env(cls, instance_name: str) -> ConsumerSettings:
        return cls(
            enabled=env_bool("STREAM_CONSUMERS_ENABLED", True),
            name=env_str("STREAM_CONSUMER_NAME", "") or instance_name or f"{socket.gethostname()}-{os.getpid()}",
            batch_size=env_int("STREAM_BATCH_SIZE", 100),
            block_ms=env_int("STREAM_BLOCK_MS", 1000),
            claim_idle_ms=env_int("STREAM_CLAIM_IDLE_MS", 30_000),
        )


@dataclass(frozen=True)
class ServiceSettings:
    """What every service process needs, whatever its domain."""

    name: str
    grpc_listen: str
    admin_listen: str
    database: DatabaseSettings
    redis_url: str
    cache_prefix: str  # this service's own keys: CACHE_PREFIX + "<name>:"
    jwt_public_key_file: str
    jwt_issuer: str
    jwt_audience: str
    log_level: str
    # SIGTERM: report NOT_SERVING, wait drain_delay for health checkers to notice, then stop with
    # grace for in-flight calls (the order that loses nothing: stopping first refuses the calls
    # still being routed here). Its bounds: mesh/timing.py, checked by from_env.
    drain_delay_seconds: float
    shutdown_grace_seconds: float
    # The mesh's control plane (host:port of capsule.mesh.v1.RegistryService). Empty: no
    # registration (Envoy's static config lists the instance, or there is no Envoy).
    control_plane_target: str = ""
    # Failure domain reported with the registration (Envoy locality zone).
    zone: str = "local"
    # host:port Envoy should dial; empty: GRPC_LISTEN (a wildcard host becomes this machine's IP).
    advertise_address: str = ""
    # This instance's name (the launcher sets e.g. auth-0), sent as endpoint metadata.
    instance_name: str = ""
    # SIGTERM with a control plane: once it confirmed that every Envoy applied the removal, wait
    # this long for calls Envoy had already forwarded (in the network) before stopping the server.
    deregistered_drain_seconds: float = TIMING.deregistered_drain_seconds
    # CACHE_PREFIX itself: the namespace of what the whole mesh shares in Redis (change channels).
    mesh_prefix: str = ""
    # SIGTERM: how long background jobs (unlocker, purge) may take to finish their current pass
    # once the gRPC server stopped, before they are cancelled.
    background_stop_seconds: float = 5.0
    purge: PurgeSettings = field(default_factory=PurgeSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    consumers: ConsumerSettings = field(default_factory=ConsumerSettings)

    @classmethod
    def from_env(cls, name: str, default_grpc_port: int, default_admin_port: int) -> ServiceSettings:
        timing = service_timing()
        return cls(
            name=name,
            grpc_listen=env_str("GRPC_LISTEN", f"127.0.0.1:{default_grpc_port}"),
            admin_listen=env_str("ADMIN_LISTEN", f"127.0.0.1:{default_admin_port}"),
            database=DatabaseSettings.from_env(default_database=name),
            redis_url=env_str("REDIS_URL", "redis://127.0.0.1:6379/0"),
            cache_prefix=env_str("CACHE_PREFIX", "") + f"{name}:",
            jwt_public_key_file=env_str("JWT_PUBLIC_KEY_FILE", ".run/keys/jwt-public.pem"),
            jwt_issuer=env_str("JWT_ISSUER", "capsule-mesh/auth"),
            jwt_audience=env_str("JWT_AUDIENCE", "capsule-mesh"),
            log_level=env_str("LOG_LEVEL", "INFO"),
            drain_delay_seconds=timing.drain_delay_seconds,
            shutdown_grace_seconds=env_float("SHUTDOWN_GRACE_SECONDS", 10.0),
            control_plane_target=env_str("CONTROL_PLANE_TARGET", ""),
            zone=env_str("SERVICE_ZONE", "local"),
            advertise_address=env_str("ADVERTISE_ADDRESS", ""),
            instance_name=env_str("SERVICE_INSTANCE", ""),
            deregistered_drain_seconds=timing.deregistered_drain_seconds,
            mesh_prefix=env_str("CACHE_PREFIX", ""),
            background_stop_seconds=env_float("BACKGROUND_STOP_SECONDS", 5.0),
            purge=PurgeSettings.from_env(),
            outbox=OutboxSettings.from_env(),
            consumers=ConsumerSettings.from_env(env_str("SERVICE_INSTANCE", "")),
        )
