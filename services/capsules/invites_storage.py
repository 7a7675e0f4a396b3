"""SQL of invites (invites.py), each statement with the index it uses."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.capsules.storage import CAPSULE_COLUMNS, CapsuleRow

INVITE_COLUMNS = "capsule_id, token, created_at, claimer, claim_started_at, sender_name, claimed_at"
_CAPSULE_NAMES = tuple(c.strip() for c in CAPSULE_COLUMNS.split(","))


@dataclass(frozen=True, slots=True)
class InviteRow:
    capsule_id: uuid.UUID
    token: str
    created_at: datetime
    claimer: uuid.UUID | None
    claim_started_at: datetime | None
    sender_name: str | None
    claimed_at: datetime | None


@dataclass(frozen=True, slots=True)
class InviteWithCapsule:
    invite: InviteRow
    capsule: CapsuleRow
    deleted: bool  # the sender deleted the capsule


def _invite(values: Any) -> InviteRow:
    return InviteRow(**{name: values[name] for name in INVITE_COLUMNS.split(", ")})


def _joined(where: str) -> TextClause:
    """An invite with its capsule, deleted or not (the caller decides what a deleted one means)."""
    invite = ", ".join(f"i.{c}" for c in INVITE_COLUMNS.split(", "))
    capsule = ", ".join(f"c.{c} AS c_{c}" for c in _CAPSULE_NAMES)
    return text(
        f"SELECT {invite}, {capsule}, c.deleted_at IS NOT NULL AS capsule_deleted "
        f"FROM invites i JOIN capsules c ON c.id = i.capsule_id WHERE {where}"
    )


INVITE_OF_CAPSULE = text(f"SELECT {INVITE_COLUMNS} FROM invites WHERE capsule_id = :capsule_id")  # invites_pkey
# invites_pkey: of concurrent first asks one inserts, the others then read its row.
INSERT_INVITE = text(
    f"INSERT INTO invites (capsule_id, token) VALUES (:capsule_id, :token) "
    f"ON CONFLICT (capsule_id) DO NOTHING RETURNING {INVITE_COLUMNS}"
)
BY_TOKEN = _joined("i.token = :token")  # invites_token_key, then capsules_pkey
BY_CAPSULE = _joined("i.capsule_id = :capsule_id")  # invites_pkey, then capsules_pkey
# invites_pkey. The first claimer wins: only an invite nobody began to claim is taken.
BEGIN_CLAIM = text(
    "UPDATE invites SET claimer = :claimer, claim_started_at = :now, sender_name = :sender_name "
    "WHERE capsule_id = :capsule_id AND claimer IS NULL RETURNING capsule_id"
)
# invites_pkey. A claim the recipients service refused (a block appeared): the invite is free again.
ABANDON_CLAIM = text(
    "UPDATE invites SET claimer = NULL, claim_started_at = NULL, sender_name = NULL "
    "WHERE capsule_id = :capsule_id AND claimer = :claimer AND claimed_at IS NULL"
)
# capsules_pkey. Only a capsule still waiting for its recipient: a repeat changes nothing.
DELIVER = text(
    f"UPDATE capsules SET recipient_user = :claimer, updated_at = :now "
    f"WHERE id = :capsule_id AND recipient_user IS NULL RETURNING {CAPSULE_COLUMNS}"
)
MARK_CLAIMED = text(  # invites_pkey
    "UPDATE invites SET claimed_at = :now WHERE capsule_id = :capsule_id AND claimer = :claimer AND claimed_at IS NULL"
)
CAPSULE_ANY = text(f"SELECT {CAPSULE_COLUMNS} FROM capsules WHERE id = :capsule_id")  # capsules_pkey
# invites_unfinished_idx: claims begun before `before` and never completed, oldest first.
UNFINISHED = text(
    f"SELECT {INVITE_COLUMNS} FROM invites "
    "WHERE claimer IS NOT NULL AND claimed_at IS NULL AND claim_started_at <= :before "
    "ORDER BY claim_started_at LIMIT :limit"
)


async def invite_for_capsule(conn: AsyncConnection, capsule_id: uuid.UUID) -> InviteRow | None:
    row = (await conn.execute(INVITE_OF_CAPSULE, {"capsule_id": capsule_id})).first()
    return _invite(row._mapping) if row else None


async def insert_invite(conn: AsyncConnection, capsule_id: uuid.UUID, token: str) -> InviteRow | None:
    row = (await conn.execute(INSERT_INVITE, {"capsule_id": capsule_id, "token": token})).first()
    return _invite(row._mapping) if row else None


async def invite_by_token(conn: AsyncConnection, token: str) -> InviteWithCapsule | None:
    return _with_capsule((await conn.execute(BY_TOKEN, {"token": token})).first())


async def invite_with_capsule(conn: AsyncConnection, capsule_id: uuid.UUID) -> InviteWithCapsule | None:
    return _with_capsule((await conn.execute(BY_CAPSULE, {"capsule_id": capsule_id})).first())


def _with_capsule(row: Any) -> InviteWithCapsule | None:
    if row is None:
        return None
    values = row._mapping
    capsule = CapsuleRow(**{name: values["c_" + name] for name in _CAPSULE_NAMES})
    return InviteWithCapsule(_invite(values), capsule, bool(values["capsule_deleted"]))


async def begin_claim(
    conn: AsyncConnection, capsule_id: uuid.UUID, claimer: uuid.UUID, now: datetime, sender_name: str
) -> bool:
    values = {"capsule_id": capsule_id, "claimer": claimer, "now": now, "sender_name": sender_name}
    return (await conn.execute(BEGIN_CLAIM, values)).first() is not None


async def abandon_claim(conn: AsyncConnection, capsule_id: uuid.UUID, claimer: uuid.UUID) -> None:
    await conn.execute(ABANDON_CLAIM, {"capsule_id": capsule_id, "claimer": claimer})


async def complete_claim(
    conn: AsyncConnection, capsule_id: uuid.UUID, claimer: uuid.UUID, now: datetime
) -> tuple[CapsuleRow | None, bool]:
    """The capsule given its recipient user and the invite marked claimed, idempotently: the
    capsule's row as it is after (None: no such capsule), and whether this call is the one that
    marked the invite claimed (False for a repeat: the row lock makes a concurrent repeat wait and
    then find it claimed)."""
    values = {"capsule_id": capsule_id, "claimer": claimer, "now": now}
    delivered = (await conn.execute(DELIVER, values)).first()
    completed = bool((await conn.execute(MARK_CLAIMED, values)).rowcount)
    row = delivered or (await conn.execute(CAPSULE_ANY, {"capsule_id": capsule_id})).first()
    return (CapsuleRow(**row._mapping) if row else None), completed


async def unfinished_claims(conn: AsyncConnection, before: datetime, limit: int) -> list[InviteRow]:
    rows = await conn.execute(UNFINISHED, {"before": before, "limit": limit})
    return [_invite(row._mapping) for row in rows]
