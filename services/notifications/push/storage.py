"""SQL of devices and push deliveries (migrations/versions/0002_devices.py): sqlalchemy `text()` on
the connection of a db.read()/db.write(). Every statement names the index behind it;
tests/notifications/test_push.py EXPLAINs them on seeded data."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

MAX_UUID = uuid.UUID(int=(1 << 128) - 1)


@dataclass(frozen=True, slots=True)
class DeviceRow:
    token: str
    user_id: uuid.UUID
    platform: str
    seq: uuid.UUID
    created_at: datetime
    last_success_at: datetime | None


_DEVICE = "token, user_id, platform, seq, created_at, last_success_at"

# --- devices ---------------------------------------------------------------------------------------

# The primary key; FOR UPDATE: a register, an unregister and a move of one token take turns.
LOCK_DEVICE = text(f"SELECT {_DEVICE} FROM devices WHERE token = :token FOR UPDATE")


async def lock_device(conn: AsyncConnection, token: str) -> DeviceRow | None:
    row = (await conn.execute(LOCK_DEVICE, {"token": token})).first()
    return DeviceRow(**row._mapping) if row else None


# The primary key: a concurrent first registration of the same token conflicts and inserts nothing.
INSERT_DEVICE = text(
    f"INSERT INTO devices (token, user_id, platform, seq) VALUES (:token, :user_id, :platform, :seq) "
    f"ON CONFLICT (token) DO NOTHING RETURNING {_DEVICE}"
)


async def insert_device(
    conn: AsyncConnection, token: str, user: uuid.UUID, platform: str, seq: uuid.UUID
) -> DeviceRow | None:
    row = (
        await conn.execute(INSERT_DEVICE, {"token": token, "user_id": user, "platform": platform, "seq": seq})
    ).first()
    return DeviceRow(**row._mapping) if row else None


# The primary key. A token that changes hands starts afresh: new position in the list, no success yet.
MOVE_DEVICE = text(
    f"UPDATE devices SET user_id = :user_id, platform = :platform, seq = :seq, created_at = now(), "
    f"last_success_at = NULL WHERE token = :token RETURNING {_DEVICE}"
)


async def move_device(conn: AsyncConnection, token: str, user: uuid.UUID, platform: str, seq: uuid.UUID) -> DeviceRow:
    row = (await conn.execute(MOVE_DEVICE, {"token": token, "user_id": user, "platform": platform, "seq": seq})).one()
    return DeviceRow(**row._mapping)


# push_deliveries_token_idx: what was still queued for the token's former owner.
DROP_PENDING = text("DELETE FROM push_deliveries WHERE token = :token AND state = 'pending'")


async def drop_pending(conn: AsyncConnection, token: str) -> int:
    return (await conn.execute(DROP_PENDING, {"token": token})).rowcount


# The primary key; the user_id condition makes another user's token NOT_FOUND. Its deliveries go
# with it (ON DELETE CASCADE, through push_deliveries_token_idx).
DELETE_OWN_DEVICE = text("DELETE FROM devices WHERE token = :token AND user_id = :user_id")


async def delete_own_device(conn: AsyncConnection, token: str, user: uuid.UUID) -> bool:
    return (await conn.execute(DELETE_OWN_DEVICE, {"token": token, "user_id": user})).rowcount > 0


# devices_user_idx (user_id, seq), newest first.
LIST_DEVICES = text(
    f"SELECT {_DEVICE} FROM devices WHERE user_id = :user_id AND seq < :after ORDER BY seq DESC LIMIT :limit"
)


async def list_devices(
    conn: AsyncConnection, user: uuid.UUID, *, after: uuid.UUID | None, limit: int
) -> list[DeviceRow]:
    rows = await conn.execute(LIST_DEVICES, {"user_id": user, "after": after or MAX_UUID, "limit": limit})
    return [DeviceRow(**r._mapping) for r in rows]


# --- deliveries ------------------------------------------------------------------------------------

# devices_user_idx (user_id): one delivery per device of the notified user, in the transaction that
# inserted the notification (a notification and its pushes commit together or not at all).
QUEUE = text(
    "INSERT INTO push_deliveries (notification_id, token) SELECT :notification_id, token FROM devices "
    "WHERE user_id = :user_id ON CONFLICT DO NOTHING"
)


async def queue(conn: AsyncConnection, notification_id: uuid.UUID, user: uuid.UUID) -> int:
    return (await conn.execute(QUEUE, {"notification_id": notification_id, "user_id": user})).rowcount


@dataclass(frozen=True, slots=True)
class Claimed:
    notification_id: uuid.UUID
    token: str
    platform: str
    attempts: int
    kind: str
    capsule_id: uuid.UUID | None
    request_id: uuid.UUID | None
    reply_id: uuid.UUID | None
    thought_id: uuid.UUID | None


# push_deliveries_due_idx (next_attempt_at) WHERE pending: the soonest due, SKIP LOCKED so that
# senders on several instances take disjoint batches. Claiming counts the attempt and pushes the
# row's time forward by a lease: the send happens after the COMMIT (no transaction held across a
# network call), and a sender killed mid-send leaves rows that come due again when the lease ends.
CLAIM = text(
    "WITH due AS (SELECT notification_id, token FROM push_deliveries "
    "  WHERE state = 'pending' AND next_attempt_at <= :now ORDER BY next_attempt_at LIMIT :batch "
    "  FOR UPDATE SKIP LOCKED) "
    "UPDATE push_deliveries p SET attempts = p.attempts + 1, next_attempt_at = :lease_end "
    "FROM due, devices d, notifications n "
    "WHERE p.notification_id = due.notification_id AND p.token = due.token "
    "  AND d.token = p.token AND n.id = p.notification_id "
    "RETURNING p.notification_id, p.token, d.platform, p.attempts, n.kind, n.capsule_id, n.request_id, "
    "  n.reply_id, n.thought_id"
)


async def claim_due(conn: AsyncConnection, now: datetime, batch: int, lease: timedelta) -> list[Claimed]:
    rows = await conn.execute(CLAIM, {"now": now, "batch": batch, "lease_end": now + lease})
    return [Claimed(**r._mapping) for r in rows]


# The primary key; `state = 'pending'`: an outcome never overwrites a row that another sender
# finished meanwhile (a lease that ran out under a slow provider).
DELIVERED = text(
    "UPDATE push_deliveries SET state = 'delivered' WHERE notification_id = :n AND token = :token AND state = 'pending'"
)
# The primary key of devices.
TOUCH_DEVICE = text("UPDATE devices SET last_success_at = :now WHERE token = :token")
RESCHEDULE = text(
    "UPDATE push_deliveries SET next_attempt_at = :at WHERE notification_id = :n AND token = :token "
    "AND state = 'pending'"
)
GIVE_UP = text(
    "UPDATE push_deliveries SET state = 'given_up' WHERE notification_id = :n AND token = :token AND state = 'pending'"
)
# The primary key; its deliveries, pending or not, go with it (ON DELETE CASCADE).
DELETE_DEVICE = text("DELETE FROM devices WHERE token = :token")


async def mark_delivered(conn: AsyncConnection, notification_id: uuid.UUID, token: str, now: datetime) -> bool:
    done = (await conn.execute(DELIVERED, {"n": notification_id, "token": token})).rowcount > 0
    await conn.execute(TOUCH_DEVICE, {"token": token, "now": now})
    return done


async def reschedule(conn: AsyncConnection, notification_id: uuid.UUID, token: str, at: datetime) -> None:
    await conn.execute(RESCHEDULE, {"n": notification_id, "token": token, "at": at})


async def give_up(conn: AsyncConnection, notification_id: uuid.UUID, token: str) -> bool:
    return (await conn.execute(GIVE_UP, {"n": notification_id, "token": token})).rowcount > 0


async def delete_device(conn: AsyncConnection, token: str) -> bool:
    return (await conn.execute(DELETE_DEVICE, {"token": token})).rowcount > 0
