"""SQL of the capsules service; each query has its index (see migrations/versions/).

Most statements are SQLAlchemy Core text() on the connections of `Database.read()`/`write()`; the
inbox and outbox pages, the hottest reads, run on the driver's connection (`Database.driver_read()`,
positional `$n` parameters, asyncpg records), whose columns are in CapsuleRow's order. The statements
tests/capsules/test_query_plans.py EXPLAINs are public names."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.db import DriverConnection
from services.common.idempotency import PriorRequest

# --- themes --------------------------------------------------------------------------------------

THEME_COLUMNS = "id, name, description, gradient_start, gradient_end, premium"


@dataclass(frozen=True, slots=True)
class ThemeRow:
    id: uuid.UUID
    name: str
    description: str
    gradient_start: str
    gradient_end: str
    premium: bool


async def theme(conn: AsyncConnection, theme_id: uuid.UUID) -> ThemeRow | None:
    row = (await conn.execute(text(f"SELECT {THEME_COLUMNS} FROM themes WHERE id = :id"), {"id": theme_id})).first()
    return ThemeRow(**row._mapping) if row else None


async def theme_exists(conn: AsyncConnection, theme_id: uuid.UUID) -> bool:
    return bool(
        (await conn.execute(text("SELECT EXISTS (SELECT 1 FROM themes WHERE id = :id)"), {"id": theme_id})).scalar_one()
    )


_THEMES = text(
    f"SELECT {THEME_COLUMNS} FROM themes WHERE (name, id) > (:after_name, :after_id) ORDER BY name, id LIMIT :limit"
)


async def list_themes(conn: AsyncConnection, *, after: tuple[str, uuid.UUID] | None, limit: int) -> list[ThemeRow]:
    after_name, after_id = after if after else ("", uuid.UUID(int=0))
    rows = await conn.execute(_THEMES, {"after_name": after_name, "after_id": after_id, "limit": limit})
    return [ThemeRow(**r._mapping) for r in rows]


# --- capsules ------------------------------------------------------------------------------------

CAPSULE_COLUMNS = (
    "id, sender, recipient_id, recipient_user, title, body, theme_id, unlocks_at, anonymous, "
    "reveal_delay_seconds, created_at, updated_at, opened_at, disappear_after_seconds, disappears_at, disappeared_at"
)


@dataclass(frozen=True, slots=True)
class CapsuleRow:
    id: uuid.UUID
    sender: uuid.UUID
    recipient_id: uuid.UUID
    # None while the recipient is linked to no one: the capsule waits for its invite to be claimed
    # (invites.py), which sets the claimer here and puts the capsule in their inbox.
    recipient_user: uuid.UUID | None
    title: str
    body: str | None  # None once erased (a disappearing letter past its time, SPEC §13)
    theme_id: uuid.UUID | None
    unlocks_at: datetime
    anonymous: bool
    reveal_delay_seconds: int
    created_at: datetime
    updated_at: datetime
    opened_at: datetime | None
    # Disappearing letters (disappearing.py). Defaults: rows cached before these columns existed.
    disappear_after_seconds: int | None = None
    disappears_at: datetime | None = None
    disappeared_at: datetime | None = None


async def insert_capsule(
    conn: AsyncConnection,
    *,
    id: uuid.UUID,
    sender: uuid.UUID,
    recipient_id: uuid.UUID,
    recipient_user: uuid.UUID | None,
    title: str,
    body: str,
    theme_id: uuid.UUID | None,
    unlocks_at: datetime,
    anonymous: bool,
    reveal_delay_seconds: int,
    disappear_after_seconds: int | None = None,
) -> CapsuleRow:
    row = (
        await conn.execute(
            text(
                "INSERT INTO capsules (id, sender, recipient_id, recipient_user, title, body, theme_id, unlocks_at, "
                "anonymous, reveal_delay_seconds, disappear_after_seconds) VALUES (:id, :sender, :recipient_id, "
                ":recipient_user, :title, :body, :theme_id, :unlocks_at, :anonymous, :reveal, :disappear) "
                f"RETURNING {CAPSULE_COLUMNS}"
            ),
            {
                "id": id,
                "sender": sender,
                "recipient_id": recipient_id,
                "recipient_user": recipient_user,
                "title": title,
                "body": body,
                "theme_id": theme_id,
                "unlocks_at": unlocks_at,
                "anonymous": anonymous,
                "reveal": reveal_delay_seconds,
                "disappear": disappear_after_seconds,
            },
        )
    ).one()
    return CapsuleRow(**row._mapping)


CAPSULE = text(f"SELECT {CAPSULE_COLUMNS} FROM capsules WHERE id = :id AND deleted_at IS NULL")
_CAPSULE_FOR_UPDATE = text(f"SELECT {CAPSULE_COLUMNS} FROM capsules WHERE id = :id AND deleted_at IS NULL FOR UPDATE")


async def capsule(conn: AsyncConnection, capsule_id: uuid.UUID, *, for_update: bool = False) -> CapsuleRow | None:
    """A capsule that is not deleted (primary key look-up); the caller checks who may see it."""
    statement = _CAPSULE_FOR_UPDATE if for_update else CAPSULE
    row = (await conn.execute(statement, {"id": capsule_id})).first()
    return CapsuleRow(**row._mapping) if row else None


UPDATABLE_COLUMNS = ("title", "body", "theme_id", "unlocks_at")


async def update_capsule(
    conn: AsyncConnection, capsule_id: uuid.UUID, changes: dict[str, object], now: datetime
) -> CapsuleRow:
    assignments = ", ".join(f"{column} = :{column}" for column in changes)
    row = (
        await conn.execute(
            text(f"UPDATE capsules SET {assignments}, updated_at = :now WHERE id = :id RETURNING {CAPSULE_COLUMNS}"),
            {**changes, "id": capsule_id, "now": now},
        )
    ).one()
    return CapsuleRow(**row._mapping)


async def soft_delete(conn: AsyncConnection, capsule_id: uuid.UUID, now: datetime) -> None:
    await conn.execute(
        text("UPDATE capsules SET deleted_at = :now, updated_at = :now WHERE id = :id"), {"id": capsule_id, "now": now}
    )


async def mark_opened(conn: AsyncConnection, capsule_id: uuid.UUID, now: datetime) -> CapsuleRow | None:
    """Sets opened_at once: None when it was already set (nothing written). A disappearing letter's
    clock starts in the same statement, so every open agrees on one disappears_at."""
    row = (
        await conn.execute(
            text(
                "UPDATE capsules SET opened_at = CAST(:now AS timestamptz), "
                "disappears_at = CAST(:now AS timestamptz) + disappear_after_seconds * interval '1 second' "
                f"WHERE id = :id AND opened_at IS NULL RETURNING {CAPSULE_COLUMNS}"
            ),
            {"id": capsule_id, "now": now},
        )
    ).first()
    return CapsuleRow(**row._mapping) if row else None


# Status at a given time (`$5`, the service's clock): sealed before unlocks_at, opened once
# opened_at is set, ready in between.
STATUS_CONDITIONS = {
    "sealed": "AND unlocks_at > $5",
    "ready": "AND unlocks_at <= $5 AND opened_at IS NULL",
    "opened": "AND opened_at IS NOT NULL",
    "": "",
}


def _list_query(owner_column: str, status: str) -> str:
    # Served by capsules_inbox_idx / capsules_outbox_idx: (owner, unlocks_at, id) WHERE deleted_at IS NULL.
    # $1 owner, $2/$3 the keyset position, $4 limit, $5 now (status filters only).
    return (
        f"SELECT {CAPSULE_COLUMNS} FROM capsules WHERE {owner_column} = $1 AND deleted_at IS NULL "
        f"AND (unlocks_at, id) > ($2, $3) {STATUS_CONDITIONS[status]} "
        "ORDER BY unlocks_at, id LIMIT $4"
    )


# Driver-level SQL (positional parameters): the inbox and outbox pages are the hottest reads.
LISTS = {
    (box, status): _list_query("recipient_user" if box == "inbox" else "sender", status)
    for box in ("inbox", "outbox")
    for status in STATUS_CONDITIONS
}
_BEGINNING = (datetime(1, 1, 1, tzinfo=UTC), uuid.UUID(int=0))


async def list_capsules(
    conn: DriverConnection,
    user: uuid.UUID,
    *,
    box: str,
    status: str,
    now: datetime,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[CapsuleRow]:
    after_time, after_id = after or _BEGINNING
    args: tuple[object, ...] = (user, after_time, after_id, limit)
    if "$5" in STATUS_CONDITIONS[status]:
        args += (now,)
    return [CapsuleRow(*record) for record in await conn.fetch(LISTS[(box, status)], *args)]


@dataclass(frozen=True, slots=True)
class SummaryRow:
    sealed: int
    opened: int
    total: int
    next_unlocks_at: datetime | None


SUMMARY = text(
    """
    SELECT count(*) FILTER (WHERE unlocks_at > :now) AS sealed,
           count(*) FILTER (WHERE opened_at IS NOT NULL) AS opened,
           count(*) AS total,
           min(unlocks_at) FILTER (WHERE unlocks_at > :now) AS next_unlocks_at
      FROM capsules
     WHERE recipient_user = :u AND deleted_at IS NULL
    """
)


async def inbox_summary(conn: AsyncConnection, user: uuid.UUID, now: datetime) -> SummaryRow:
    row = (await conn.execute(SUMMARY, {"u": user, "now": now})).one()
    return SummaryRow(**row._mapping)


# --- idempotency ---------------------------------------------------------------------------------

# The result a key already has within its 24 h (services.common.idempotency's table and window);
# a read before the claim, so a retry is answered without asking other services again.
_IDEMPOTENT_RESULT = text(
    "SELECT request_hash, result_id FROM idempotency_keys "
    "WHERE operation = :operation AND caller = :caller AND key = :key "
    "AND result_id IS NOT NULL AND created_at >= now() - interval '24 hours'"
)


async def idempotent_result(conn: AsyncConnection, *, operation: str, caller: str, key: str) -> PriorRequest | None:
    row = (await conn.execute(_IDEMPOTENT_RESULT, {"operation": operation, "caller": caller, "key": key})).first()
    return PriorRequest(request_hash=bytes(row.request_hash), result_id=row.result_id) if row else None


# --- the unlocker --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DueRow:
    id: uuid.UUID
    recipient_user: uuid.UUID
    sender: uuid.UUID
    unlocks_at: datetime


# capsules_unlocker_idx; SKIP LOCKED: several unlockers take disjoint batches. A capsule waiting for
# its invite to be claimed has no one to announce it to: it enters the index (and is announced)
# once claimed.
DUE = text(
    """
    SELECT id, recipient_user, sender, unlocks_at FROM capsules
     WHERE unlocks_at <= :now AND unlocked_event_at IS NULL AND deleted_at IS NULL
       AND recipient_user IS NOT NULL
     ORDER BY unlocks_at
     LIMIT :limit
       FOR UPDATE SKIP LOCKED
    """
)


async def lock_due(conn: AsyncConnection, now: datetime, limit: int) -> list[DueRow]:
    rows = await conn.execute(DUE, {"now": now, "limit": limit})
    return [DueRow(**r._mapping) for r in rows]


async def mark_published(conn: AsyncConnection, ids: list[uuid.UUID], now: datetime) -> None:
    await conn.execute(
        text("UPDATE capsules SET unlocked_event_at = :now WHERE id = ANY(:ids)"), {"ids": ids, "now": now}
    )


# --- disappearing letters (disappearing.py) -------------------------------------------------------

# capsules_disappear_idx (disappears_at) WHERE disappears_at IS NOT NULL AND disappeared_at IS NULL;
# SKIP LOCKED: several erasers take disjoint batches, none waits for an open holding a row.
ERASE_DUE = text(
    f"""
    UPDATE capsules SET body = NULL, disappeared_at = :now
     WHERE id IN (SELECT id FROM capsules
                   WHERE disappears_at <= :now AND disappeared_at IS NULL
                   ORDER BY disappears_at
                   LIMIT :limit
                     FOR UPDATE SKIP LOCKED)
    RETURNING {CAPSULE_COLUMNS}
    """
)


async def erase_due_bodies(conn: AsyncConnection, now: datetime, limit: int) -> list[CapsuleRow]:
    """Erases the bodies whose time has come (at most `limit`): the erased rows."""
    rows = await conn.execute(ERASE_DUE, {"now": now, "limit": limit})
    return [CapsuleRow(**r._mapping) for r in rows]
