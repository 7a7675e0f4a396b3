"""The consumers (SPEC §14): every event on the mesh's streams that concerns a user becomes exactly
one notification, however often it is delivered and whichever consumer crashes.

Streams (services/common/events.py): the capsules unlocker's `ready_stream` (its own fields:
capsule_id, recipient_user, sender, unlocks_at) and each producer's `events_stream` (the envelope,
`events.Event`). Every serving instance runs one consumer per stream, all in one consumer group
(GROUP) so each entry goes to one of them, each consumer named after its instance.

One pass of a consumer:

    XAUTOCLAIM stream GROUP me <idle> …   entries another consumer read and did not ack for
                                         <idle> ms (it died, or hangs): taken over
    XREADGROUP GROUP me BLOCK … >        new entries (first its own pending ones, "0", once at start:
                                         what this same instance read before a restart)
    BEGIN; INSERT … ON CONFLICT DO NOTHING (one per entry); COMMIT
    XACK stream GROUP <ids>

Where a kill lands:
- before the COMMIT: nothing written; the entries stay pending in the group and are read again
  (by this instance after its restart, or by another's XAUTOCLAIM after the idle time);
- between the COMMIT and the XACK: the rows are there, the entries still pending; when they are
  delivered again the inserts conflict (notifications_event_key / notifications_capsule_ready_key)
  and insert nothing, then they are acked — exactly one notification either way;
- after the XACK: done.
The failpoints `consumer.read` (entries delivered, nothing inserted) and `consumer.inserted` (rows
committed, entries not acked) are these two windows (services/common/failpoints.py;
tests/notifications/test_crash_exactly_once.py kills the consumer at each).
A consumer that is only slow (past the idle time) may have its entries claimed by another while it
still works on them: both insert, one conflicts. The idempotent insert is what makes every case
safe; the group and the acks only keep work from being lost or repeated needlessly.

A malformed entry (missing or unparsable fields, an unknown type) is logged (its stream id and what
was wrong, never its content), counted, and acked: it never blocks the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as redis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError, ResponseError

from services.common import events
from services.common.db import Database
from services.common.failpoints import failpoint
from services.common.ids import new_id
from services.notifications import storage
from services.notifications.push import storage as push_storage
from services.notifications.storage import NewNotification

log = logging.getLogger(__name__)

GROUP = "notifications"

CONSUMED = Counter(
    "notification_events_consumed_total", "Stream entries made into a new notification", ["stream", "kind"]
)
DUPLICATES = Counter(
    "notification_events_duplicate_total",
    "Stream entries whose notification already existed (a second delivery)",
    ["stream"],
)
MALFORMED = Counter("notification_events_malformed_total", "Stream entries that were not events (acked)", ["stream"])
CLAIMED = Counter(
    "notification_events_claimed_total", "Entries taken over from a consumer that did not ack them", ["stream"]
)
LAG = Gauge("notification_consumer_lag", "Entries of the stream not yet delivered to the group", ["stream"])
PENDING = Gauge("notification_consumer_pending", "Entries delivered to the group and not yet acked", ["stream"])

# A UUID namespace for the ready stream, whose entries carry no event id: the capsule's own id
# mapped into it is the event's id (one ready notification per capsule).
READY_NAMESPACE = uuid.UUID("5b0c7e0e-4f5e-4d9b-9a43-2f1f6b1a7c11")

# events.py type → (kind, the data field naming the user notified, the data field naming the
# other person, the ids kept: notification column → data field).
_KINDS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    events.CONNECTION_REQUEST_RECEIVED: (
        "connection_request_received",
        "to_user",
        "from_user",
        {"request_id": "request_id"},
    ),
    events.CONNECTION_REQUEST_ACCEPTED: (
        "connection_request_accepted",
        "from_user",
        "to_user",
        {"request_id": "request_id"},
    ),
    events.THOUGHT_RECEIVED: ("thought_received", "receiver", "sender", {"thought_id": "thought_id"}),
    events.REPLY_RECEIVED: (
        "reply_received",
        "capsule_sender",
        "author",
        {"capsule_id": "capsule_id", "reply_id": "reply_id"},
    ),
    events.INVITE_CLAIMED: ("invite_claimed", "sender", "claimer", {"capsule_id": "capsule_id"}),
}

Fields = Mapping[bytes | str, bytes | str]
Decode = Callable[[Fields], NewNotification]


def _text(fields: Fields, name: str) -> str:
    value = fields.get(name.encode(), fields.get(name))
    if value is None:
        raise KeyError(name)
    return value.decode() if isinstance(value, bytes) else value


def from_ready(fields: Fields) -> NewNotification:
    """A capsules:ready entry → the recipient's capsule_ready notification (ValueError/KeyError when
    it is not one). The sender is not kept: the capsule may be anonymous."""
    capsule = uuid.UUID(_text(fields, "capsule_id"))
    return NewNotification(
        id=new_id(),
        event_id=uuid.uuid5(READY_NAMESPACE, str(capsule)),
        user_id=uuid.UUID(_text(fields, "recipient_user")),
        kind="capsule_ready",
        capsule_id=capsule,
    )


def from_event(fields: Fields) -> NewNotification:
    """An envelope (events.Event) → its notification (ValueError/KeyError when it is not one)."""
    event = events.Event.from_fields(fields)
    if event.type not in _KINDS:
        raise ValueError(f"unknown event type {event.type!r}")
    kind, notified, other, kept = _KINDS[event.type]

    def data_uuid(name: str) -> uuid.UUID:
        value = event.data[name]
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        return uuid.UUID(value)

    ids: dict[str, Any] = {column: data_uuid(name) for column, name in kept.items()}
    return NewNotification(
        id=new_id(),
        event_id=event.id,
        user_id=data_uuid(notified),
        kind=kind,
        other_user_id=data_uuid(other),
        **ids,
    )


class StreamConsumer:
    """One stream, one consumer of the group (see the module doc)."""

    def __init__(
        self,
        db: Database,
        client: redis.Redis,
        *,
        stream: str,
        decode: Decode,
        consumer: str,
        batch_size: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        retry_seconds: float = 1.0,
        metrics_interval_seconds: float = 5.0,
    ) -> None:
        self.db = db
        self.redis = client
        self.stream = stream
        self.decode = decode
        self.consumer = consumer
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.retry_seconds = retry_seconds
        self.metrics_interval = metrics_interval_seconds
        self._claim_cursor = "0-0"
        self._metrics_at = 0.0

    async def ensure_group(self) -> None:
        """The group, from the stream's start ("0": entries published before this service first
        ran are notified too), creating the stream if it does not exist yet."""
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        log.info("consumer started", extra={"fields": {"stream": self.stream, "consumer": self.consumer}})
        own_pending = True  # first what this consumer name read and never acked (a restart)
        while not stop.is_set():
            try:
                if own_pending:
                    await self.ensure_group()
                    own_pending = await self.read_own_pending()
                    continue
                await self.claim_stale()
                await self.read_new()
                await self._observe()
            except (RedisError, OSError, ConnectionError) as exc:
                log.warning("consumer pass failed", extra={"fields": {"stream": self.stream, "error": str(exc)}})
                if "NOGROUP" in str(exc):
                    own_pending = True  # the stream was deleted: create the group again
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.retry_seconds)
        log.info("consumer stopped", extra={"fields": {"stream": self.stream}})

    async def read_own_pending(self) -> bool:
        """One batch of this consumer's own pending entries; whether there may be more."""
        answer = await self.redis.xreadgroup(GROUP, self.consumer, {self.stream: "0"}, count=self.batch_size)
        entries = _entries(answer)
        await self.handle(entries)
        return len(entries) >= self.batch_size

    async def claim_stale(self) -> int:
        """Take over entries pending longer than the idle time (a consumer that died before its ack)."""
        answer = await self.redis.xautoclaim(
            self.stream, GROUP, self.consumer, self.claim_idle_ms, start_id=self._claim_cursor, count=self.batch_size
        )
        # [next cursor, entries, (Redis 7) ids that no longer exist]; a deleted entry comes back as
        # (id, None) on Redis 6.2.
        self._claim_cursor = _str(answer[0])
        entries = [(_str(i), f) for i, f in answer[1] if f is not None]
        if entries:
            CLAIMED.labels(self.stream).inc(len(entries))
            log.info("took over stale entries", extra={"fields": {"stream": self.stream, "count": len(entries)}})
            await self.handle(entries)
        return len(entries)

    async def read_new(self) -> int:
        answer = await self.redis.xreadgroup(
            GROUP, self.consumer, {self.stream: ">"}, count=self.batch_size, block=self.block_ms
        )
        entries = _entries(answer)
        await self.handle(entries)
        return len(entries)

    async def handle(self, entries: Sequence[tuple[str, Fields]]) -> None:
        """Insert the entries' notifications in one transaction, then ack them all. Nothing is
        acked unless the insert committed (the module doc's crash windows)."""
        if not entries:
            return
        # Delivered to this consumer (pending in its name), nothing written: only a re-read or a
        # takeover can bring them back.
        failpoint("consumer.read")
        rows: list[NewNotification] = []
        for entry_id, fields in entries:
            try:
                rows.append(self.decode(fields))
            except (KeyError, ValueError, TypeError) as exc:
                MALFORMED.labels(self.stream).inc()
                log.warning(
                    "malformed stream entry acked without a notification",
                    extra={"fields": {"stream": self.stream, "entry": entry_id, "error": type(exc).__name__}},
                )
        new: list[NewNotification] = []
        if rows:
            async with self.db.write(touching={row.user_id for row in rows}) as conn:
                for row in rows:
                    if await storage.insert(conn, row):
                        new.append(row)
                        # Its pushes, one per device, committed with it (push/sender.py sends them).
                        await push_storage.queue(conn, row.id, row.user_id)
        # After the COMMIT: a kill here leaves the entries pending, and their next delivery
        # inserts nothing.
        failpoint("consumer.inserted")
        await self.redis.xack(self.stream, GROUP, *[entry_id for entry_id, _ in entries])
        for row in new:
            CONSUMED.labels(self.stream, row.kind).inc()
        if len(rows) > len(new):
            DUPLICATES.labels(self.stream).inc(len(rows) - len(new))

    async def _observe(self) -> None:
        """The group's lag and pending count (XINFO GROUPS: one cheap call every few seconds)."""
        now = time.monotonic()
        if now - self._metrics_at < self.metrics_interval:
            return
        self._metrics_at = now
        for group in await self.redis.xinfo_groups(self.stream):
            if _str(group.get("name", "")) == GROUP:
                PENDING.labels(self.stream).set(int(group.get("pending") or 0))
                lag = group.get("lag")
                if lag is not None:
                    LAG.labels(self.stream).set(int(lag))


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(answer: Any) -> list[tuple[str, Fields]]:
    """XREADGROUP's answer for one stream → [(entry id, fields)]. A pending entry trimmed from the
    stream since it was read comes back without fields: handled as malformed (acked), so it does
    not stay pending for ever."""
    return [(_str(entry_id), fields or {}) for _stream, entries in answer or [] for entry_id, fields in entries]
