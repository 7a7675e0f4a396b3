"""Reads that may lag go to streaming standbys (SPEC §9), with read-your-writes and a lag bound.

Which reads: only those a service names with `Database.read_may_lag` — lists, summaries, profiles,
search. Everything else (reads inside a write, credentials, the checks a write depends on) stays
on the primary.

Read-your-writes, without anything from the client. A write names the users whose data it changed
(`Database.write(touching=...)`); after its COMMIT the primary's WAL position is recorded for each
of them in Redis (`Watermarks`, kept a little longer than the lag bound). A read names the users
whose data it returns (the caller's inbox: the caller; profiles: those users); it goes to a
replica only if that replica has replayed every recorded position of those users, otherwise to
the primary. So the caller sees their own writes at once, and so does everyone reading data a
write touched (B's inbox after A sent B a capsule, A's profile after A renamed): the position is
recorded before the write answers, before any cache is updated or change announced. Data nobody
named (a new user in someone else's search results) may be stale within the lag bound.

Health. `ReplicaRouter.monitor` asks the primary for its WAL position and each replica for the
position it replayed, every DB_REPLICA_PROBE_SECONDS (0.5 s). A replica's lag is the age of the
oldest primary position it has not replayed (to within one probe interval), which stays 0 on an
idle primary however old its last transaction is. A replica is used only while its last probe
succeeded recently, it is still in recovery, and its lag is within DB_REPLICA_MAX_LAG_SECONDS
(2 s): one that is down, promoted, paused for too long or behind is skipped until a probe sees it
well again. With none left, reads go to the primary. A read that fails on a replica (connection
lost, standby stopping, conflict with recovery, DB_REPLICA_READ_TIMEOUT_SECONDS exceeded) marks
it down until the next good probe and is run again on the primary: a stopped standby costs no
failed call.

Redis away: positions cannot be looked up (or were not recorded), so reads go to the primary — for
a second after a failed look-up (no Redis timeout paid per read meanwhile), and for a watermark
period on the instance whose recording failed. Left open: an instance that reaches Redis while the writer could
not record may read that write's users from a replica until it is replayed (within the bound).

Metrics: `db_reads_total{target}` (primary or replica name, every read), `db_replica_lag_seconds`,
`db_replica_up`, and `db_replica_fallbacks_total{reason}` for reads that could have gone to a
replica and went to the primary: `not_replayed` (a named user's write not replayed yet),
`unhealthy` (no replica within the bound and up), `error` (failed on a replica, rerun),
`watermarks_unknown` (Redis could not say).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import redis.asyncio as redis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

REPLICA_LAG = Gauge("db_replica_lag_seconds", "Replay lag of a read replica behind the primary", ["replica"])
REPLICA_UP = Gauge("db_replica_up", "1 while the replica takes reads (up, in recovery, within the bound)", ["replica"])
REPLICA_FALLBACKS = Counter(
    "db_replica_fallbacks_total", "Reads that may lag but went to the primary, by reason", ["reason"]
)
for _reason in ("not_replayed", "unhealthy", "error", "watermarks_unknown"):
    REPLICA_FALLBACKS.labels(_reason)  # every reason scraped from the start, at 0
WATERMARK_ERRORS = Counter("db_watermark_errors_total", "Redis errors recording or looking up WAL positions")

_LOOKUP_BACKOFF_SECONDS = 1.0
# Lag is measured against the primary's positions of the last few seconds; older samples go.
_SAMPLES_KEPT_SECONDS_MIN = 10.0

# KEYS: one per user; ARGV[1] the position (16 hex digits, so string order is numeric order),
# ARGV[2] seconds to keep it. Keeps the highest position: a slower writer with an older one
# must not lower it.
_RECORD_LUA = """
for _, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if not current or current < ARGV[1] then
    redis.call('SET', key, ARGV[1], 'EX', ARGV[2])
  else
    redis.call('EXPIRE', key, ARGV[2])
  end
end
return #KEYS
"""


def parse_lsn(value: str) -> int:
    """`16/B374D848` (pg_lsn's text) → the 64-bit WAL position."""
    high, _, low = value.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _lsn_key(lsn: int) -> str:
    return f"{lsn:016x}"


class WatermarksUnknown(Exception):
    """Redis could not say which positions the users' reads must wait for."""


class Watermarks:
    """Per user, the primary's WAL position after that user's data last changed, kept in Redis for
    `keep_seconds` (every instance of the service shares them)."""

    def __init__(self, client: redis.Redis, prefix: str, keep_seconds: float) -> None:
        self.client = client
        self.prefix = prefix
        self.keep_seconds = max(1, int(keep_seconds + 0.999))
        self._record = client.register_script(_RECORD_LUA)
        # After this instance failed to record, it cannot vouch for any replica read until then.
        self._blind_until = 0.0

    def key(self, user: uuid.UUID | str) -> str:
        return f"{self.prefix}lsn:{user}"

    async def record(self, lsn: int, users: Collection[uuid.UUID | str]) -> None:
        keys = [self.key(u) for u in dict.fromkeys(users)]
        try:
            await self._record(keys=keys, args=[_lsn_key(lsn), self.keep_seconds])
        except (RedisError, OSError) as exc:
            self.lost(exc)

    def lost(self, error: BaseException) -> None:
        """A write's position could not be recorded: vouch for no replica read until it would
        have expired."""
        WATERMARK_ERRORS.inc()
        self._blind_until = time.monotonic() + self.keep_seconds
        log.warning("could not record a write's WAL position", extra={"fields": {"error": str(error)}})

    async def needed(self, users: Collection[uuid.UUID | str]) -> int:
        """The highest position recorded for `users` (0: none), or WatermarksUnknown."""
        if time.monotonic() < self._blind_until:
            raise WatermarksUnknown("this instance failed to record a position")
        if not users:
            return 0
        try:
            values = await self.client.mget([self.key(u) for u in users])
        except (RedisError, OSError) as exc:
            WATERMARK_ERRORS.inc()
            # Redis away: the next reads go to the primary straight away for a moment instead of
            # each paying Redis's timeout.
            self._blind_until = max(self._blind_until, time.monotonic() + _LOOKUP_BACKOFF_SECONDS)
            raise WatermarksUnknown(str(exc)) from exc
        found = [int(v, 16) for v in values if v]
        return max(found, default=0)


@dataclass
class Replica:
    """One read replica: its pool (autocommit) and what the last probes saw."""

    name: str
    engine: AsyncEngine
    reads: AsyncEngine  # the same pool in autocommit
    replayed: int = 0
    lag_seconds: float = float("inf")
    probed_at: float = 0.0  # monotonic time of the last successful probe; 0 = none yet
    in_recovery: bool = False
    failed_until: float = 0.0  # a failed read keeps it out until the next good probe

    def usable(self, now: float, max_lag: float, stale_after: float) -> bool:
        return (
            self.in_recovery
            and now - self.probed_at <= stale_after
            and self.lag_seconds <= max_lag
            and now >= self.failed_until
        )


def replica_name(url: str) -> str:
    """host:port/database of a replica URL (no credentials), for logs and metric labels."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


@dataclass
class ReplicaRouter:
    replicas: list[Replica]
    primary: AsyncEngine
    watermarks: Watermarks
    max_lag_seconds: float = 2.0
    probe_interval_seconds: float = 0.5
    probe_timeout_seconds: float = 1.0
    # (monotonic time, primary position) of the recent probes, oldest first.
    _samples: deque[tuple[float, int]] = field(default_factory=deque)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        for replica in self.replicas:
            REPLICA_UP.labels(replica.name).set(0)

    @property
    def stale_after(self) -> float:
        """A probe older than this no longer vouches for a replica (missed probes: a hung server)."""
        return 3 * self.probe_interval_seconds + self.probe_timeout_seconds

    # --- routing ---------------------------------------------------------------------------------

    async def choose(self, users: Collection[uuid.UUID | str]) -> Replica | None:
        """A replica for a read of `users`' data that may lag, or None: read from the primary."""
        now = time.monotonic()
        usable = [r for r in self.replicas if r.usable(now, self.max_lag_seconds, self.stale_after)]
        if not usable:
            REPLICA_FALLBACKS.labels("unhealthy").inc()
            return None
        try:
            needed = await self.watermarks.needed(users)
        except WatermarksUnknown:
            REPLICA_FALLBACKS.labels("watermarks_unknown").inc()
            return None
        caught_up = [r for r in usable if r.replayed >= needed]
        if not caught_up:
            REPLICA_FALLBACKS.labels("not_replayed").inc()
            return None
        return caught_up[next(self._turn) % len(caught_up)]

    def read_failed(self, replica: Replica, error: BaseException) -> None:
        """A read on `replica` failed: out until a probe after this moment succeeds."""
        REPLICA_FALLBACKS.labels("error").inc()
        replica.failed_until = time.monotonic() + self.stale_after
        REPLICA_UP.labels(replica.name).set(0)
        log.warning(
            "read replica failed a read; reading from the primary",
            extra={"fields": {"replica": replica.name, "error": str(error) or type(error).__name__}},
        )

    # --- health ----------------------------------------------------------------------------------

    async def monitor(self, stop: asyncio.Event) -> None:
        """Background job: probe the primary and every replica each interval until `stop`."""
        while not stop.is_set():
            await self.probe_once()
            # Jitter: the instances of a service do not probe in lock step.
            pause = self.probe_interval_seconds * random.uniform(0.9, 1.1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)

    async def probe_once(self) -> None:
        primary_lsn = await self._primary_position()
        now = time.monotonic()
        if primary_lsn is not None:
            self._samples.append((now, primary_lsn))
        keep = max(_SAMPLES_KEPT_SECONDS_MIN, 3 * self.max_lag_seconds)
        while len(self._samples) > 1 and now - self._samples[0][0] > keep:
            self._samples.popleft()
        await asyncio.gather(*(self._probe(r) for r in self.replicas))

    async def _primary_position(self) -> int | None:
        try:
            (value,) = await self._ask(self.primary, "SELECT pg_current_wal_lsn()::text")
            return parse_lsn(str(value))
        except Exception as exc:  # the primary's own errors surface on the calls that use it
            log.debug("replica monitor could not read the primary's position", extra={"fields": {"error": str(exc)}})
            return None

    async def _ask(self, engine: AsyncEngine, sql: str) -> tuple[object, ...]:
        """One row, within the probe timeout, on a pooled connection that is discarded if anything
        goes wrong (a query cut short by the timeout leaves it mid-operation)."""
        async with engine.connect() as conn:
            try:
                async with asyncio.timeout(self.probe_timeout_seconds):
                    return tuple((await conn.execute(text(sql))).one())
            except BaseException:
                if not conn.invalidated:
                    await conn.invalidate()
                raise

    async def _probe(self, replica: Replica) -> None:
        was_usable = replica.usable(time.monotonic(), self.max_lag_seconds, self.stale_after)
        try:
            row = await self._ask(
                replica.reads, "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn()::text, '0/0')"
            )
        except Exception as exc:
            replica.probed_at = 0.0
            replica.lag_seconds = float("inf")
            REPLICA_UP.labels(replica.name).set(0)
            if was_usable:
                log.warning("read replica down", extra={"fields": {"replica": replica.name, "error": str(exc)}})
            return
        now = time.monotonic()
        replica.in_recovery = bool(row[0])
        replica.replayed = parse_lsn(str(row[1]))
        replica.lag_seconds = self._lag(replica.replayed, now)
        replica.probed_at = now
        replica.failed_until = 0.0
        usable = replica.usable(now, self.max_lag_seconds, self.stale_after)
        REPLICA_LAG.labels(replica.name).set(replica.lag_seconds if replica.lag_seconds != float("inf") else -1)
        REPLICA_UP.labels(replica.name).set(1 if usable else 0)
        if usable != was_usable:
            state = "back" if usable else ("promoted" if not replica.in_recovery else "lagging")
            log.warning(
                f"read replica {state}",
                extra={"fields": {"replica": replica.name, "lag_seconds": round(replica.lag_seconds, 3)}},
            )

    def _lag(self, replayed: int, now: float) -> float:
        """Age of the oldest primary position (among the recent samples) the replica lacks; unknown
        (infinite) when it lacks even the oldest sample: it may be any amount further behind."""
        for index, (sampled_at, position) in enumerate(self._samples):
            if position > replayed:
                return float("inf") if index == 0 else now - sampled_at
        return 0.0
