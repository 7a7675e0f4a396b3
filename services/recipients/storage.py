"""SQL of the recipients service: sqlalchemy `text()` on the connection of a db.read()/db.write(), and
the hot list of connections on the driver's connection (db.driver_read(), `$n` parameters).

Lists are keyset-paginated: requests, connections and blocks newest first by their time-ordered
(UUIDv7) id; recipients by (sort_name, id). No OFFSET anywhere. Every statement has an index
behind it (see migrations/versions/0001_*.py); the statements tests/recipients/test_query_plans.py
EXPLAINs are public names.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.db import DriverConnection

# Larger than every UUID: the "after" of a first page read newest first.
MAX_UUID = uuid.UUID(int=(1 << 128) - 1)


def ordered(a: uuid.UUID, b: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    return (a, b) if a < b else (b, a)


# --- locks ---------------------------------------------------------------------------------------
# Transaction-level advisory locks serialise the checks-then-write of one sender (rate limit) and
# of one pair of users (pending/connected/blocked), so concurrent calls cannot both pass a check.


async def lock_sender(conn: AsyncConnection, user: uuid.UUID) -> None:
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"sender:{user}"})


async def lock_pair(conn: AsyncConnection, a: uuid.UUID, b: uuid.UUID) -> None:
    low, high = ordered(a, b)
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"pair:{low}:{high}"})


# --- connection requests -------------------------------------------------------------------------

REQUEST_COLUMNS = "id, from_user, to_user, message, status, decline_reason, created_at, responded_at"


@dataclass(frozen=True, slots=True)
class RequestRow:
    id: uuid.UUID
    from_user: uuid.UUID
    to_user: uuid.UUID
    message: str
    status: str
    decline_reason: str
    created_at: datetime
    responded_at: datetime | None


async def insert_request(
    conn: AsyncConnection, *, id: uuid.UUID, from_user: uuid.UUID, to_user: uuid.UUID, message: str
) -> RequestRow:
    row = (
        await conn.execute(
            text(
                f"INSERT INTO connection_requests (id, from_user, to_user, message) "
                f"VALUES (:id, :f, :t, :m) RETURNING {REQUEST_COLUMNS}"
            ),
            {"id": id, "f": from_user, "t": to_user, "m": message},
        )
    ).one()
    return RequestRow(**row._mapping)


async def request_by_id(conn: AsyncConnection, request_id: uuid.UUID, *, for_update: bool = False) -> RequestRow | None:
    lock = " FOR UPDATE" if for_update else ""
    row = (
        await conn.execute(
            text(f"SELECT {REQUEST_COLUMNS} FROM connection_requests WHERE id = :id{lock}"), {"id": request_id}
        )
    ).first()
    return RequestRow(**row._mapping) if row else None


PENDING_ONE_WAY = text(
    f"SELECT {REQUEST_COLUMNS} FROM connection_requests "
    "WHERE least(from_user, to_user) = :low AND greatest(from_user, to_user) = :high "
    "AND status = 'pending' AND from_user = :f"
)


async def pending_request(conn: AsyncConnection, from_user: uuid.UUID, to_user: uuid.UUID) -> RequestRow | None:
    """The pending request from → to (one way), if any; served by the pending-pair index."""
    low, high = ordered(from_user, to_user)
    row = (
        await conn.execute(
            PENDING_ONE_WAY,
            {"low": low, "high": high, "f": from_user},
        )
    ).first()
    return RequestRow(**row._mapping) if row else None


SENT_SINCE = text(
    "SELECT count(*) AS n, min(created_at) AS oldest FROM connection_requests "
    "WHERE from_user = :f AND created_at > now() - make_interval(hours => :h)"
)


async def requests_sent_since(conn: AsyncConnection, from_user: uuid.UUID, hours: int) -> tuple[int, datetime | None]:
    """How many requests the user created in the last `hours`, and the oldest of them."""
    row = (
        await conn.execute(
            SENT_SINCE,
            {"f": from_user, "h": hours},
        )
    ).one()
    return int(row.n), row.oldest


DECLINED_SINCE = text(
    "SELECT max(responded_at) FROM connection_requests "
    "WHERE from_user = :f AND to_user = :t AND status = 'declined' "
    "AND responded_at > now() - make_interval(days => :d)"
)


async def declined_since(conn: AsyncConnection, from_user: uuid.UUID, to_user: uuid.UUID, days: int) -> datetime | None:
    """When the addressee last declined a request of this sender within `days`, if they did."""
    return (
        await conn.execute(
            DECLINED_SINCE,
            {"f": from_user, "t": to_user, "d": days},
        )
    ).scalar_one_or_none()


async def set_request_status(
    conn: AsyncConnection, request_id: uuid.UUID, status: str, decline_reason: str = ""
) -> RequestRow:
    row = (
        await conn.execute(
            text(
                "UPDATE connection_requests SET status = :s, decline_reason = :r, responded_at = now() "
                f"WHERE id = :id RETURNING {REQUEST_COLUMNS}"
            ),
            {"s": status, "r": decline_reason, "id": request_id},
        )
    ).one()
    return RequestRow(**row._mapping)


async def cancel_pending_between(conn: AsyncConnection, a: uuid.UUID, b: uuid.UUID) -> None:
    low, high = ordered(a, b)
    await conn.execute(
        text(
            "UPDATE connection_requests SET status = 'cancelled', responded_at = now() "
            "WHERE least(from_user, to_user) = :low AND greatest(from_user, to_user) = :high AND status = 'pending'"
        ),
        {"low": low, "high": high},
    )


INCOMING = text(
    f"SELECT {REQUEST_COLUMNS} FROM connection_requests "
    "WHERE to_user = :u AND status = 'pending' AND id < :after ORDER BY id DESC LIMIT :limit"
)
OUTGOING = text(
    f"SELECT {REQUEST_COLUMNS} FROM connection_requests "
    "WHERE from_user = :u AND status = 'pending' AND id < :after ORDER BY id DESC LIMIT :limit"
)


async def list_requests(
    conn: AsyncConnection, user: uuid.UUID, *, incoming: bool, after: uuid.UUID | None, limit: int
) -> list[RequestRow]:
    rows = await conn.execute(
        INCOMING if incoming else OUTGOING, {"u": user, "after": after or MAX_UUID, "limit": limit}
    )
    return [RequestRow(**r._mapping) for r in rows]


# --- connections ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionRow:
    id: uuid.UUID
    other: uuid.UUID
    created_at: datetime


async def insert_connection(conn: AsyncConnection, id: uuid.UUID, a: uuid.UUID, b: uuid.UUID) -> bool:
    low, high = ordered(a, b)
    row = (
        await conn.execute(
            text(
                "INSERT INTO connections (id, user_low, user_high) VALUES (:id, :low, :high) "
                "ON CONFLICT (user_low, user_high) DO NOTHING RETURNING true"
            ),
            {"id": id, "low": low, "high": high},
        )
    ).first()
    return row is not None


async def delete_connection(conn: AsyncConnection, a: uuid.UUID, b: uuid.UUID) -> bool:
    low, high = ordered(a, b)
    row = (
        await conn.execute(
            text("DELETE FROM connections WHERE user_low = :low AND user_high = :high RETURNING true"),
            {"low": low, "high": high},
        )
    ).first()
    return row is not None


async def connected(conn: AsyncConnection, a: uuid.UUID, b: uuid.UUID) -> bool:
    low, high = ordered(a, b)
    return bool(
        (
            await conn.execute(
                text("SELECT EXISTS (SELECT 1 FROM connections WHERE user_low = :low AND user_high = :high)"),
                {"low": low, "high": high},
            )
        ).scalar_one()
    )


# Driver-level SQL ($1 user, $2 keyset position, $3 limit): the list of connections is a hot read
# (the mobile app's contacts screen), run on the driver's connection (Database.driver_read()).
CONNECTIONS = """
    SELECT id, other, created_at FROM (
        (SELECT id, user_high AS other, created_at FROM connections
          WHERE user_low = $1 AND id < $2 ORDER BY id DESC LIMIT $3)
        UNION ALL
        (SELECT id, user_low AS other, created_at FROM connections
          WHERE user_high = $1 AND id < $2 ORDER BY id DESC LIMIT $3)
    ) AS mine
    ORDER BY id DESC LIMIT $3
    """


async def list_connections(
    conn: DriverConnection, user: uuid.UUID, *, after: uuid.UUID | None, limit: int
) -> list[ConnectionRow]:
    return [ConnectionRow(*record) for record in await conn.fetch(CONNECTIONS, user, after or MAX_UUID, limit)]


# --- blocks --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockRow:
    id: uuid.UUID
    blocked: uuid.UUID
    created_at: datetime


async def insert_block(conn: AsyncConnection, id: uuid.UUID, blocker: uuid.UUID, blocked: uuid.UUID) -> BlockRow:
    await conn.execute(
        text(
            "INSERT INTO blocks (id, blocker, blocked) VALUES (:id, :a, :b) ON CONFLICT (blocker, blocked) DO NOTHING"
        ),
        {"id": id, "a": blocker, "b": blocked},
    )
    row = (
        await conn.execute(
            text("SELECT id, blocked, created_at FROM blocks WHERE blocker = :a AND blocked = :b"),
            {"a": blocker, "b": blocked},
        )
    ).one()
    return BlockRow(**row._mapping)


async def delete_block(conn: AsyncConnection, blocker: uuid.UUID, blocked: uuid.UUID) -> None:
    await conn.execute(text("DELETE FROM blocks WHERE blocker = :a AND blocked = :b"), {"a": blocker, "b": blocked})


BLOCKED_EITHER_WAY = text(
    "SELECT EXISTS (SELECT 1 FROM blocks WHERE (blocker = :a AND blocked = :b) OR (blocker = :b AND blocked = :a))"
)


async def blocked_either_way(conn: AsyncConnection, a: uuid.UUID, b: uuid.UUID) -> bool:
    return bool(
        (
            await conn.execute(
                BLOCKED_EITHER_WAY,
                {"a": a, "b": b},
            )
        ).scalar_one()
    )


BLOCK_RELATIONS = text(
    "SELECT blocked FROM blocks WHERE blocker = :u UNION SELECT blocker FROM blocks WHERE blocked = :u"
)


async def block_relations(conn: AsyncConnection, user: uuid.UUID) -> list[uuid.UUID]:
    """Everyone the user blocked or who blocked the user."""
    rows = await conn.execute(
        BLOCK_RELATIONS,
        {"u": user},
    )
    return [r[0] for r in rows]


LIST_BLOCKS = text(
    "SELECT id, blocked, created_at FROM blocks WHERE blocker = :u AND id < :after ORDER BY id DESC LIMIT :limit"
)


async def list_blocks(conn: AsyncConnection, user: uuid.UUID, *, after: uuid.UUID | None, limit: int) -> list[BlockRow]:
    rows = await conn.execute(
        LIST_BLOCKS,
        {"u": user, "after": after or MAX_UUID, "limit": limit},
    )
    return [BlockRow(**r._mapping) for r in rows]


# --- recipients ----------------------------------------------------------------------------------

RECIPIENT_COLUMNS = "id, owner, name, email, linked_user, sort_name, created_at, updated_at"


@dataclass(frozen=True, slots=True)
class RecipientRow:
    id: uuid.UUID
    owner: uuid.UUID
    name: str
    email: str | None
    linked_user: uuid.UUID | None
    sort_name: str
    created_at: datetime
    updated_at: datetime


async def insert_recipient(
    conn: AsyncConnection,
    *,
    id: uuid.UUID,
    owner: uuid.UUID,
    name: str,
    email: str | None,
    linked_user: uuid.UUID | None,
) -> RecipientRow:
    row = (
        await conn.execute(
            text(
                "INSERT INTO recipients (id, owner, name, email, linked_user) VALUES (:id, :o, :n, :e, :l) "
                f"RETURNING {RECIPIENT_COLUMNS}"
            ),
            {"id": id, "o": owner, "n": name, "e": email, "l": linked_user},
        )
    ).one()
    return RecipientRow(**row._mapping)


async def ensure_linked_recipient(
    conn: AsyncConnection, *, id: uuid.UUID, owner: uuid.UUID, linked_user: uuid.UUID, name: str
) -> None:
    """A recipient of `owner` linked to `linked_user`: the existing one if there is, else a new one."""
    await conn.execute(
        text(
            "INSERT INTO recipients (id, owner, name, linked_user) VALUES (:id, :o, :n, :l) "
            "ON CONFLICT (owner, linked_user) WHERE linked_user IS NOT NULL DO NOTHING"
        ),
        {"id": id, "o": owner, "n": name, "l": linked_user},
    )


async def recipient(conn: AsyncConnection, owner: uuid.UUID, recipient_id: uuid.UUID) -> RecipientRow | None:
    row = (
        await conn.execute(
            text(f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE id = :id AND owner = :o"),
            {"id": recipient_id, "o": owner},
        )
    ).first()
    return RecipientRow(**row._mapping) if row else None


UPDATABLE_COLUMNS = {"name": "name", "email": "email", "linked_user_id": "linked_user"}


async def update_recipient(
    conn: AsyncConnection, owner: uuid.UUID, recipient_id: uuid.UUID, changes: dict[str, object]
) -> RecipientRow | None:
    assignments = ", ".join(f"{column} = :{column}" for column in changes)
    row = (
        await conn.execute(
            text(
                f"UPDATE recipients SET {assignments}, updated_at = now() WHERE id = :id AND owner = :o "
                f"RETURNING {RECIPIENT_COLUMNS}"
            ),
            {**changes, "id": recipient_id, "o": owner},
        )
    ).first()
    return RecipientRow(**row._mapping) if row else None


async def delete_recipient(conn: AsyncConnection, owner: uuid.UUID, recipient_id: uuid.UUID) -> bool:
    row = (
        await conn.execute(
            text("DELETE FROM recipients WHERE id = :id AND owner = :o RETURNING true"),
            {"id": recipient_id, "o": owner},
        )
    ).first()
    return row is not None


RECIPIENTS = text(
    f"""
    SELECT {RECIPIENT_COLUMNS} FROM recipients
     WHERE owner = :o AND sort_name LIKE :prefix
       AND (sort_name, id) > (:after_name, :after_id)
     ORDER BY sort_name, id
     LIMIT :limit
    """
)


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def list_recipients(
    conn: AsyncConnection,
    owner: uuid.UUID,
    *,
    prefix: str,
    after: tuple[str, uuid.UUID] | None,
    limit: int,
) -> list[RecipientRow]:
    after_name, after_id = after if after else ("", uuid.UUID(int=0))
    rows = await conn.execute(
        RECIPIENTS,
        {
            "o": owner,
            "prefix": escape_like(prefix.lower()) + "%",
            "after_name": after_name,
            "after_id": after_id,
            "limit": limit,
        },
    )
    return [RecipientRow(**r._mapping) for r in rows]


# --- thoughts (SPEC §13) -------------------------------------------------------------------------
# Indexes: migrations/versions/0002_thoughts.py.


async def lock_thought_sender(conn: AsyncConnection, sender: uuid.UUID) -> None:
    """Serialises the thoughts of one sender (count of the day, then insert) until COMMIT. A
    transaction-level advisory lock keyed by the sender alone: sends of other senders never wait on
    it, and it needs no row to exist (users live in auth's database, so there is no sender row here
    to lock with FOR UPDATE, and no per-day counter table to keep and purge). Its own key, so it
    does not queue behind the same user's connection requests (`lock_sender`)."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"thoughts:{sender}"})


@dataclass(frozen=True, slots=True)
class ThoughtRow:
    id: uuid.UUID
    other: uuid.UUID  # the receiver of an outgoing thought, the sender of an incoming one
    created_at: datetime


# Served by thoughts_sender_day_receiver_key (sender, utc_day, receiver): index-only.
THOUGHTS_SENT_ON = text("SELECT count(*) FROM thoughts WHERE sender = :s AND utc_day = :d")
THOUGHT_TO_ON = text("SELECT EXISTS (SELECT 1 FROM thoughts WHERE sender = :s AND utc_day = :d AND receiver = :r)")


async def thoughts_sent_on(conn: AsyncConnection, sender: uuid.UUID, day: date) -> int:
    """How many thoughts the sender sent on this UTC day."""
    return int((await conn.execute(THOUGHTS_SENT_ON, {"s": sender, "d": day})).scalar_one())


async def thought_sent_to_on(conn: AsyncConnection, sender: uuid.UUID, receiver: uuid.UUID, day: date) -> bool:
    """Whether the sender already sent the receiver a thought on this UTC day."""
    return bool((await conn.execute(THOUGHT_TO_ON, {"s": sender, "d": day, "r": receiver})).scalar_one())


async def insert_thought(
    conn: AsyncConnection, *, id: uuid.UUID, sender: uuid.UUID, receiver: uuid.UUID, day: date, at: datetime
) -> ThoughtRow:
    row = (
        await conn.execute(
            text(
                "INSERT INTO thoughts (id, sender, receiver, utc_day, created_at) VALUES (:id, :s, :r, :d, :at) "
                "RETURNING id, receiver AS other, created_at"
            ),
            {"id": id, "s": sender, "r": receiver, "d": day, "at": at},
        )
    ).one()
    return ThoughtRow(**row._mapping)


async def sent_thought(conn: AsyncConnection, sender: uuid.UUID, thought_id: uuid.UUID) -> ThoughtRow | None:
    """A thought of this sender by id (the replay of an idempotent send)."""
    row = (
        await conn.execute(
            text("SELECT id, receiver AS other, created_at FROM thoughts WHERE id = :id AND sender = :s"),
            {"id": thought_id, "s": sender},
        )
    ).first()
    return ThoughtRow(**row._mapping) if row else None


# Newest first by the time-ordered id: thoughts_outgoing_idx (sender, id) and
# thoughts_incoming_idx (receiver, id).
OUTGOING_THOUGHTS = text(
    "SELECT id, receiver AS other, created_at FROM thoughts "
    "WHERE sender = :u AND id < :after ORDER BY id DESC LIMIT :limit"
)
INCOMING_THOUGHTS = text(
    "SELECT id, sender AS other, created_at FROM thoughts "
    "WHERE receiver = :u AND id < :after ORDER BY id DESC LIMIT :limit"
)


async def list_thoughts(
    conn: AsyncConnection, user: uuid.UUID, *, incoming: bool, after: uuid.UUID | None, limit: int
) -> list[ThoughtRow]:
    rows = await conn.execute(
        INCOMING_THOUGHTS if incoming else OUTGOING_THOUGHTS, {"u": user, "after": after or MAX_UUID, "limit": limit}
    )
    return [ThoughtRow(**r._mapping) for r in rows]


# --- invite links (SPEC §13) ---------------------------------------------------------------------
# Table: migrations/versions/0003_invite_links.py.


@dataclass(frozen=True, slots=True)
class InviteLinkRow:
    invite_id: uuid.UUID
    sender: uuid.UUID
    claimer: uuid.UUID
    sender_recipient_id: uuid.UUID
    created_at: datetime


# Served by invite_links_pkey (invite_id).
INVITE_LINK = text(
    "SELECT invite_id, sender, claimer, sender_recipient_id, created_at FROM invite_links WHERE invite_id = :i"
)


async def invite_link(conn: AsyncConnection, invite_id: uuid.UUID) -> InviteLinkRow | None:
    """What an earlier link of this invite answered, if there was one."""
    row = (await conn.execute(INVITE_LINK, {"i": invite_id})).first()
    return InviteLinkRow(**row._mapping) if row else None


async def insert_invite_link(
    conn: AsyncConnection,
    *,
    invite_id: uuid.UUID,
    sender: uuid.UUID,
    claimer: uuid.UUID,
    sender_recipient_id: uuid.UUID,
) -> None:
    await conn.execute(
        text("INSERT INTO invite_links (invite_id, sender, claimer, sender_recipient_id) VALUES (:i, :s, :c, :r)"),
        {"i": invite_id, "s": sender, "c": claimer, "r": sender_recipient_id},
    )


# Served by recipients_owner_linked_user_key (owner, linked_user) WHERE linked_user IS NOT NULL.
LINKED_RECIPIENT = text(f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE owner = :o AND linked_user = :l")


async def linked_recipient(conn: AsyncConnection, owner: uuid.UUID, linked_user: uuid.UUID) -> RecipientRow | None:
    """The recipient of `owner` linked to `linked_user` (at most one: the unique index)."""
    row = (await conn.execute(LINKED_RECIPIENT, {"o": owner, "l": linked_user})).first()
    return RecipientRow(**row._mapping) if row else None


# Served by recipients_pkey (id); `linked_user IS NULL` is re-checked on the row once it is locked,
# so an entry the owner linked meanwhile is left alone.
LINK_UNLINKED = text(
    "UPDATE recipients SET linked_user = :l, updated_at = now() "
    f"WHERE id = :id AND owner = :o AND linked_user IS NULL RETURNING {RECIPIENT_COLUMNS}"
)


async def link_unlinked_recipient(
    conn: AsyncConnection, owner: uuid.UUID, recipient_id: uuid.UUID, linked_user: uuid.UUID
) -> RecipientRow | None:
    """Links the owner's recipient to `linked_user` if it is linked to no one; None otherwise (or
    when the owner has no such recipient)."""
    row = (await conn.execute(LINK_UNLINKED, {"l": linked_user, "id": recipient_id, "o": owner})).first()
    return RecipientRow(**row._mapping) if row else None
