"""SQL of the notifications service: sqlalchemy `text()` on the connection of a db.read()/db.write().

Every statement names the index behind it (migrations/versions/0001_notifications.py);
tests/notifications/test_query_plans.py EXPLAINs the public statements on seeded data.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncConnection

# Larger than every UUID: the "after" of a first page read newest first.
MAX_UUID = uuid.UUID(int=(1 << 128) - 1)

_COLUMNS = "id, user_id, kind, capsule_id, request_id, reply_id, thought_id, other_user_id, read, created_at"


@dataclass(frozen=True, slots=True)
class NotificationRow:
    id: uuid.UUID
    user_id: uuid.UUID
    kind: str
    capsule_id: uuid.UUID | None
    request_id: uuid.UUID | None
    reply_id: uuid.UUID | None
    thought_id: uuid.UUID | None
    other_user_id: uuid.UUID | None
    read: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewNotification:
    """What the consumers insert: one per event."""

    id: uuid.UUID
    event_id: uuid.UUID
    user_id: uuid.UUID
    kind: str
    capsule_id: uuid.UUID | None = None
    request_id: uuid.UUID | None = None
    reply_id: uuid.UUID | None = None
    thought_id: uuid.UUID | None = None
    other_user_id: uuid.UUID | None = None


# Conflicts on notifications_event_key (the same event again) or notifications_capsule_ready_key
# (a second ready event for one capsule) insert nothing: RETURNING tells what was new. Nor is
# anything inserted for an erased account (erased_accounts_pkey: erasure.py).
INSERT = text(
    "INSERT INTO notifications (id, event_id, user_id, kind, capsule_id, request_id, reply_id, thought_id, "
    "other_user_id) SELECT :id, :event_id, :user_id, :kind, :capsule_id, :request_id, :reply_id, :thought_id, "
    ":other_user_id WHERE NOT EXISTS (SELECT 1 FROM erased_accounts WHERE user_id = :user_id) "
    "ON CONFLICT DO NOTHING RETURNING id"
)


async def insert(conn: AsyncConnection, row: NewNotification) -> bool:
    """Whether the row was new (False: the event had already been made into a notification)."""
    values = {
        "id": row.id,
        "event_id": row.event_id,
        "user_id": row.user_id,
        "kind": row.kind,
        "capsule_id": row.capsule_id,
        "request_id": row.request_id,
        "reply_id": row.reply_id,
        "thought_id": row.thought_id,
        "other_user_id": row.other_user_id,
    }
    return (await conn.execute(INSERT, values)).first() is not None


# Newest first by the time-ordered id: notifications_user_idx (user_id, id).
LIST = text(f"SELECT {_COLUMNS} FROM notifications WHERE user_id = :u AND id < :after ORDER BY id DESC LIMIT :limit")


async def list_notifications(
    conn: AsyncConnection, user: uuid.UUID, *, after: uuid.UUID | None, limit: int
) -> list[NotificationRow]:
    rows = await conn.execute(LIST, {"u": user, "after": after or MAX_UUID, "limit": limit})
    return [NotificationRow(**r._mapping) for r in rows]


# notifications_unread_idx (user_id, id) WHERE NOT read: an index-only scan of the unread ones.
UNREAD_COUNT = text("SELECT count(*) FROM notifications WHERE user_id = :u AND NOT read")


async def unread_count(conn: AsyncConnection, user: uuid.UUID) -> int:
    return int((await conn.execute(UNREAD_COUNT, {"u": user})).scalar_one())


# The primary key (or notifications_unread_idx: user_id, id) finds each id; the user_id condition
# makes another user's ids change nothing.
MARK_IDS = text("UPDATE notifications SET read = true WHERE id = ANY(:ids) AND user_id = :u AND NOT read").bindparams(
    bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))
)


async def mark_ids(conn: AsyncConnection, user: uuid.UUID, ids: Sequence[uuid.UUID]) -> int:
    return (await conn.execute(MARK_IDS, {"u": user, "ids": list(ids)})).rowcount


# notifications_unread_idx (user_id, id) WHERE NOT read: walks only the unread ones up to the id.
MARK_UP_TO = text("UPDATE notifications SET read = true WHERE user_id = :u AND id <= :up_to AND NOT read")


async def mark_up_to(conn: AsyncConnection, user: uuid.UUID, up_to: uuid.UUID) -> int:
    return (await conn.execute(MARK_UP_TO, {"u": user, "up_to": up_to})).rowcount


# The primary key, or notifications_user_idx (user_id, id): either finds the one row.
OWNED = text("SELECT EXISTS (SELECT 1 FROM notifications WHERE id = :id AND user_id = :u)")


async def owned(conn: AsyncConnection, user: uuid.UUID, notification_id: uuid.UUID) -> bool:
    return bool((await conn.execute(OWNED, {"id": notification_id, "u": user})).scalar_one())
