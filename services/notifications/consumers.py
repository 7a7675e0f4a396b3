"""The consumers (SPEC §14): every event on the mesh's streams that concerns a user becomes exactly
one notification, however often it is delivered and whichever consumer crashes.

Streams (services/common/events.py): the capsules unlocker's `ready_stream` (its own fields:
capsule_id, recipient_user, sender, unlocks_at) and each producer's `events_stream` (the envelope,
`events.Event`). Every serving instance runs one consumer per stream, all in one consumer group
(GROUP) so each entry goes to one of them: the loop, the takeover of a dead consumer's entries and
the crash windows are services/common/streams.py's. Here is what one batch does
(`NotificationWriter.handle`):

    BEGIN; INSERT … ON CONFLICT DO NOTHING (one per entry, skipped for an erased account); COMMIT

- killed before the COMMIT: nothing written; the entries are read again;
- killed between the COMMIT and the XACK: delivered again, the inserts conflict
  (notifications_event_key / notifications_capsule_ready_key) and insert nothing, then they are
  acked — exactly one notification either way. The failpoints `consumer.read` and
  `consumer.handled` are these two windows (tests/notifications/test_crash_exactly_once.py).

A deleted account gets no notification, even from an event committed before its deletion and
consumed after its erasure (services/notifications/erasure.py keeps the erased accounts), nor from
a letter whose sender was deleted (the sender is then people.DELETED_ACCOUNT).

A malformed entry (missing or unparsable fields, an unknown type) is logged (its stream id and what
was wrong, never its content), counted, and acked: it never blocks the stream. Entries of the
event streams that notify no one (the account-deletion saga's) are acked without a word.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as redis
from prometheus_client import Counter

from services.common import events
from services.common.db import Database
from services.common.ids import new_id
from services.common.people import DELETED_ACCOUNT
from services.common.settings import ConsumerSettings
from services.common.streams import Entry, Fields, GroupConsumer, text_field
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
    "Stream entries that made no new notification (a second delivery, or an erased account)",
    ["stream"],
)
MALFORMED = Counter("notification_events_malformed_total", "Stream entries that were not events (acked)", ["stream"])

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

Decode = Callable[[Fields], NewNotification | None]


def from_ready(fields: Fields) -> NewNotification:
    """A capsules:ready entry → the recipient's capsule_ready notification (ValueError/KeyError when
    it is not one). The sender is not kept: the capsule may be anonymous."""
    capsule = uuid.UUID(text_field(fields, "capsule_id"))
    return NewNotification(
        id=new_id(),
        event_id=uuid.uuid5(READY_NAMESPACE, str(capsule)),
        user_id=uuid.UUID(text_field(fields, "recipient_user")),
        kind="capsule_ready",
        capsule_id=capsule,
    )


def from_event(fields: Fields) -> NewNotification | None:
    """An envelope (events.Event) → its notification, None when it notifies no one (the saga's
    events; a letter's sender who deleted their account); ValueError/KeyError when it is not one."""
    event = events.Event.from_fields(fields)
    if event.type not in _KINDS:
        if event.type in events.TYPES:
            return None
        raise ValueError(f"unknown event type {event.type!r}")
    kind, notified, other, kept = _KINDS[event.type]

    def data_uuid(name: str) -> uuid.UUID:
        value = event.data[name]
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        return uuid.UUID(value)

    ids: dict[str, Any] = {column: data_uuid(name) for column, name in kept.items()}
    user, other_user = data_uuid(notified), data_uuid(other)
    if user == DELETED_ACCOUNT:
        return None
    return NewNotification(
        id=new_id(),
        event_id=event.id,
        user_id=user,
        kind=kind,
        other_user_id=None if other_user == DELETED_ACCOUNT else other_user,
        **ids,
    )


class NotificationWriter:
    """Makes a batch of one stream's entries into notifications: GroupConsumer's `handle`."""

    def __init__(self, db: Database, *, stream: str, decode: Decode) -> None:
        self.db = db
        self.stream = stream
        self.decode = decode

    async def handle(self, entries: Sequence[Entry]) -> None:
        """Insert the entries' notifications in one transaction (the consumer acks after it)."""
        rows: list[NewNotification] = []
        for entry_id, fields in entries:
            try:
                row = self.decode(fields)
            except (KeyError, ValueError, TypeError) as exc:
                MALFORMED.labels(self.stream).inc()
                log.warning(
                    "malformed stream entry acked without a notification",
                    extra={"fields": {"stream": self.stream, "entry": entry_id, "error": type(exc).__name__}},
                )
                continue
            if row is not None:
                rows.append(row)
        new: list[NewNotification] = []
        if rows:
            async with self.db.write(touching={row.user_id for row in rows}) as conn:
                for row in rows:
                    if await storage.insert(conn, row):
                        new.append(row)
                        # Its pushes, one per device, committed with it (push/sender.py sends them).
                        await push_storage.queue(conn, row.id, row.user_id)
        for row in new:
            CONSUMED.labels(self.stream, row.kind).inc()
        if len(rows) > len(new):
            DUPLICATES.labels(self.stream).inc(len(rows) - len(new))


def consumer(
    db: Database, client: redis.Redis, settings: ConsumerSettings, *, stream: str, decode: Decode
) -> GroupConsumer:
    """The notifications group's consumer of `stream` for this instance."""
    writer = NotificationWriter(db, stream=stream, decode=decode)
    return GroupConsumer.of(client, settings, stream=stream, group=GROUP, handle=writer.handle)
