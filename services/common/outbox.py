"""The transactional outbox (SPEC §14): an event is committed with the write that caused it, then a
relay publishes it on the service's Redis stream, so a crash between the write and the publish
loses nothing.

Producing (inside the write's own transaction, the same `db.write()` block as the change):

    async with db.write(touching=...) as conn:
        row = await storage.insert_thing(conn, ...)
        await outbox.add(conn, outbox.event(events.THING_HAPPENED, {"thing_id": str(row.id), ...}))

The event is a row of the service's `outbox` table (its DDL: `create_table_sql`, shared by every
service's migration): it commits with the change or rolls back with it — a refused write leaves no
event, and an event never announces a change that did not happen.

Relaying (`Relay`, a background job of every serving instance):

    loop:  BEGIN
           SELECT … FROM outbox WHERE published_at IS NULL
            ORDER BY occurred_at, id LIMIT batch FOR UPDATE SKIP LOCKED    (outbox_unpublished_idx)
           XADD <stream> MAXLEN ~ cap * <envelope>       for each row (one pipeline)
           UPDATE outbox SET published_at = now() WHERE id = ANY(batch)
           COMMIT

- SKIP LOCKED: several instances take disjoint batches; none publishes a row another holds.
- At least once, not exactly once: a crash (or a lost connection) after the XADD and before the
  COMMIT leaves the rows unpublished, and a later pass publishes them again. Consumers therefore
  dedupe by the envelope's event id (services/common/events.py: the id is fixed when the change
  commits, so a republished event is the same event).
- Failpoint `relay.published` (services/common/failpoints.py): dead after the XADDs, before the
  COMMIT — the republish above (tests/notifications/test_crash_exactly_once.py).
- Order: oldest first within a relay; two relays at once may interleave their batches, so
  consumers must not depend on order across events.
- Redis away: the pass fails, its transaction rolls back (nothing marked), and the relay waits
  an interval that doubles up to OUTBOX_RELAY_MAX_BACKOFF_SECONDS before it tries again; it never
  dies (and the background supervisor would restart it if it did).
- Purged: published rows older than OUTBOX_RETENTION_DAYS go with the housekeeping purge
  (`purge_target`, services/common/purge.py; outbox_published_idx).
- Measured: `outbox_published_events_total{service}`, `outbox_relay_errors_total{service}`,
  `outbox_backlog_events{service}` (unpublished rows, counted up to BACKLOG_COUNT_CAP) and
  `outbox_oldest_unpublished_seconds{service}`.

Scheduled events: an event added with an `occurred_at` in the future is relayed once that time has
passed (the account-deletion saga's final pass, services/auth/deletion.py); until then it is
neither published nor counted in the backlog.

Events whose cause may be replayed (a saga step run again) take a deterministic id
(`derived_id`): `add` inserts ON CONFLICT (id) DO NOTHING, so the second emission writes nothing,
and even one that slipped through would be deduped by the consumers as the same event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as redis
from prometheus_client import Counter, Gauge
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common import events
from services.common.db import Database, after_commit
from services.common.events import Event
from services.common.failpoints import failpoint
from services.common.ids import new_id
from services.common.purge import Target, rows_where
from services.common.settings import OutboxSettings, ServiceSettings

log = logging.getLogger(__name__)

PUBLISHED = Counter("outbox_published_events_total", "Events the outbox relay published", ["service"])
RELAY_ERRORS = Counter("outbox_relay_errors_total", "Outbox relay passes that failed (Redis or Postgres)", ["service"])
BACKLOG = Gauge("outbox_backlog_events", "Unpublished outbox rows (counted up to a cap)", ["service"])
OLDEST = Gauge("outbox_oldest_unpublished_seconds", "Age of the oldest unpublished outbox row (0: none)", ["service"])

# Set once a transaction that added events committed (db.after_commit): the relay of this process
# then passes at once. Its poll (OUTBOX_RELAY_INTERVAL_SECONDS) is only the safety net for rows an
# instance committed and died before relaying, and for scheduled events coming due.
WRITTEN = asyncio.Event()

# The backlog is counted up to this: a count that stays cheap however far the relay fell behind.
BACKLOG_COUNT_CAP = 100_000
# Derived event ids live in their own UUIDv5 namespace.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "capsule-mesh/events")


def create_table_sql() -> list[str]:
    """The outbox table and its indexes: every service's migration runs exactly these, so the
    services' tables cannot drift apart (the relay and the purge are the same code for all)."""
    return [
        """
        CREATE TABLE outbox (
            -- The event's id (the envelope's `id`): what consumers dedupe by.
            id           uuid PRIMARY KEY,
            type         text NOT NULL,
            -- When the change was made (the envelope's `occurred_at`); the relay's order.
            occurred_at  timestamptz NOT NULL,
            data         jsonb NOT NULL CHECK (jsonb_typeof(data) = 'object'),
            -- NULL until the relay's XADD was committed; then the purge's clock.
            published_at timestamptz
        )
        """,
        # The relay's batch (oldest first) and the backlog count: only the unpublished rows.
        "CREATE INDEX outbox_unpublished_idx ON outbox (occurred_at, id) WHERE published_at IS NULL",
        # The purge of published rows past the retention.
        "CREATE INDEX outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL",
    ]


def drop_table_sql() -> list[str]:
    return ["DROP TABLE outbox"]


def event(type_: str, data: Mapping[str, Any], *, id: uuid.UUID | None = None, at: datetime | None = None) -> Event:
    """A new event of `type_` (events.TYPES), occurring now (or `at`: a scheduled event, relayed
    once that time has passed); a fresh UUIDv7 unless `id` is given."""
    if type_ not in events.TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    return Event(id or new_id(), type_, at or datetime.now(UTC), dict(data))


def derived_id(type_: str, key: uuid.UUID, *qualifiers: str) -> uuid.UUID:
    """The one id of the event of `type_` about `key` (and `qualifiers`: which service, which
    pass): for events that happen at most once per thing (an invite is claimed once) and whose
    cause may run twice (a resumed saga step)."""
    return uuid.uuid5(NAMESPACE, ":".join((type_, str(key), *qualifiers)))


_INSERT = text(
    "INSERT INTO outbox (id, type, occurred_at, data) VALUES (:id, :type, :occurred_at, CAST(:data AS jsonb)) "
    "ON CONFLICT (id) DO NOTHING"
)


async def add(conn: AsyncConnection, event: Event) -> bool:
    """Write `event` in the caller's transaction (`conn` from `db.write()`): it is relayed once
    that transaction commits, and never if it rolls back. False when an event with this id is
    already there (a derived id emitted again): nothing is written."""
    values = {
        "id": event.id,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "data": orjson.dumps(dict(event.data)).decode(),
    }
    added = bool((await conn.execute(_INSERT, values)).rowcount)
    if added:
        after_commit(WRITTEN.set)  # this process's relay passes at once, not at its next poll
    return added


# outbox_unpublished_idx: the oldest unpublished rows that are due (a scheduled event waits for
# its time) and no other relay holds.
BATCH = text(
    "SELECT id, type, occurred_at, data::text AS data FROM outbox WHERE published_at IS NULL "
    "AND occurred_at <= now() ORDER BY occurred_at, id LIMIT :limit FOR UPDATE SKIP LOCKED"
)
MARK_PUBLISHED = text("UPDATE outbox SET published_at = now() WHERE id = ANY(:ids)").bindparams(  # outbox_pkey
    bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))
)
# outbox_unpublished_idx (index-only): the backlog, counted up to a cap, and its oldest row.
BACKLOG_COUNT = text(
    "SELECT count(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NULL AND occurred_at <= now() LIMIT :cap) AS b"
)
OLDEST_UNPUBLISHED = text("SELECT min(occurred_at) FROM outbox WHERE published_at IS NULL")


def purge_target(settings: OutboxSettings) -> Target:
    """Published rows past the retention, for the housekeeping purge (outbox_published_idx)."""
    return rows_where(
        "outbox",
        "published_at < now() - make_interval(days => :retention_days)",
        {"retention_days": settings.retention_days},
    )


class Relay:
    """Publishes the outbox's committed events on the service's stream (see the module doc)."""

    def __init__(
        self,
        db: Database,
        redis_client: redis.Redis,
        *,
        service: str,
        stream: str,
        batch_size: int = 100,
        interval_seconds: float = 2.0,
        stream_max_length: int = 1_000_000,
        max_backoff_seconds: float = 30.0,
        publish_timeout_seconds: float = 2.0,
        measure_interval_seconds: float = 5.0,
    ) -> None:
        self.db = db
        self.redis = redis_client
        self.service = service
        self.stream = stream
        self.batch_size = batch_size
        self.interval = interval_seconds
        self.max_length = stream_max_length
        self.max_backoff = max(max_backoff_seconds, interval_seconds)
        # The XADDs run while the batch's rows are locked: a Redis that does not answer must not
        # hold them (nor the relay) whatever the client's own timeouts.
        self.publish_timeout = publish_timeout_seconds
        self.measure_interval = measure_interval_seconds
        self._measured_at = 0.0
        self._published = PUBLISHED.labels(service)
        self._errors = RELAY_ERRORS.labels(service)

    @classmethod
    def for_service(cls, db: Database, redis_client: redis.Redis, common: ServiceSettings) -> Relay:
        """The relay of a service's process, on `events.events_stream(mesh_prefix, name)`."""
        settings = common.outbox
        return cls(
            db,
            redis_client,
            service=common.name,
            stream=events.events_stream(common.mesh_prefix, common.name),
            batch_size=settings.batch_size,
            interval_seconds=settings.relay_interval_seconds,
            stream_max_length=settings.stream_max_length,
            max_backoff_seconds=settings.relay_max_backoff_seconds,
        )

    async def run_once(self) -> int:
        """One batch: how many events were published (and marked so)."""
        async with self.db.write() as conn:
            rows = (await conn.execute(BATCH, {"limit": self.batch_size})).all()
            if not rows:
                return 0
            pipe = self.redis.pipeline(transaction=False)
            for row in rows:
                envelope = Event(row.id, row.type, row.occurred_at).fields()
                envelope["data"] = row.data  # already JSON: no round trip through Python
                pipe.xadd(self.stream, envelope, maxlen=self.max_length, approximate=True)  # type: ignore[arg-type]
            await asyncio.wait_for(pipe.execute(), self.publish_timeout)
            # A crash from here to COMMIT republishes the batch: at least once (module doc).
            failpoint("relay.published")
            await conn.execute(MARK_PUBLISHED, {"ids": [row.id for row in rows]})
        self._published.inc(len(rows))
        return len(rows)

    async def measure(self) -> None:
        """The backlog gauges (a failure to read them is only logged)."""
        try:
            async with self.db.read() as conn:
                count = await conn.scalar(BACKLOG_COUNT, {"cap": BACKLOG_COUNT_CAP})
                oldest = await conn.scalar(OLDEST_UNPUBLISHED)
        except Exception as exc:
            log.warning("outbox backlog not measured", extra={"fields": {"error": str(exc)}})
            return
        BACKLOG.labels(self.service).set(float(count or 0))
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
        OLDEST.labels(self.service).set(max(age, 0.0))

    async def _measure_now_and_then(self) -> None:
        """The backlog gauges, at most every measure_interval (two queries: not on every pass)."""
        if time.monotonic() - self._measured_at >= self.measure_interval:
            self._measured_at = time.monotonic()
            await self.measure()

    async def run(self, stop: asyncio.Event) -> None:
        log.info("outbox relay started", extra={"fields": {"stream": self.stream}})
        pause = self.interval
        while not stop.is_set():
            WRITTEN.clear()  # a commit from here on wakes the pause below
            try:
                published = await self.run_once()
            except Exception as exc:  # Redis or Postgres away: back off, never die
                self._errors.inc()
                log.warning("outbox relay pass failed", extra={"fields": {"error": str(exc), "retry_in_s": pause}})
                await self._measure_now_and_then()
                wait, pause = pause, min(pause * 2, self.max_backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)  # new commits do not cut a back-off
                continue
            pause = self.interval
            if published >= self.batch_size:
                continue  # more are waiting: no pause
            await self._measure_now_and_then()
            await _first_of(stop, WRITTEN, within=self.interval)
        log.info("outbox relay stopped")


async def _first_of(*events_: asyncio.Event, within: float) -> None:
    """Until one of `events_` is set, or `within` seconds passed."""
    waits = [asyncio.ensure_future(e.wait()) for e in events_]
    try:
        await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
