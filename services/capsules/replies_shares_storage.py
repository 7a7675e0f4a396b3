"""SQL of replies and countdown shares (SPEC §13); each statement names the index behind it
(migrations/versions/0003_replies_shares.py). The statements tests/capsules/test_query_plans_replies_shares.py
EXPLAINs are public names."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.capsules.storage import ThemeRow

# --- replies -------------------------------------------------------------------------------------

REPLY_COLUMNS = "r.id, r.capsule_id, r.author, r.text, r.emoji, r.created_at"


@dataclass(frozen=True, slots=True)
class ReplyRow:
    id: uuid.UUID
    capsule_id: uuid.UUID
    author: uuid.UUID
    text: str
    emoji: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ReplyWithParties:
    """A reply and the two people who may read it (its capsule's sender and recipient)."""

    reply: ReplyRow
    sender: uuid.UUID
    recipient_user: uuid.UUID | None


# capsule_replies_capsule_key (unique on capsule_id), then capsules_pkey.
REPLY_OF_CAPSULE = text(
    f"SELECT {REPLY_COLUMNS}, c.sender, c.recipient_user FROM capsule_replies r "
    "JOIN capsules c ON c.id = r.capsule_id AND c.deleted_at IS NULL WHERE r.capsule_id = :capsule_id"
)
# capsule_replies_pkey: an idempotent retry answers the reply its key created.
REPLY_BY_ID = text(f"SELECT {REPLY_COLUMNS} FROM capsule_replies r WHERE r.id = :id")
# The unique constraint decides concurrent replies: the loser waits for the winner's commit, then
# inserts nothing (no row returned).
_INSERT_REPLY = text(
    "INSERT INTO capsule_replies AS r (id, capsule_id, author, text, emoji) "
    "VALUES (:id, :capsule_id, :author, :text, :emoji) "
    f"ON CONFLICT ON CONSTRAINT capsule_replies_capsule_key DO NOTHING RETURNING {REPLY_COLUMNS}"
)


async def reply_of_capsule(conn: AsyncConnection, capsule_id: uuid.UUID) -> ReplyWithParties | None:
    row = (await conn.execute(REPLY_OF_CAPSULE, {"capsule_id": capsule_id})).first()
    if row is None:
        return None
    values = row._mapping
    reply = ReplyRow(**{name: values[name] for name in ReplyRow.__slots__})  # type: ignore[attr-defined]
    return ReplyWithParties(reply, values["sender"], values["recipient_user"])


async def reply_by_id(conn: AsyncConnection, reply_id: uuid.UUID) -> ReplyRow | None:
    row = (await conn.execute(REPLY_BY_ID, {"id": reply_id})).first()
    return ReplyRow(**row._mapping) if row else None


async def insert_reply(
    conn: AsyncConnection, *, id: uuid.UUID, capsule_id: uuid.UUID, author: uuid.UUID, text: str, emoji: str
) -> ReplyRow | None:
    """The stored reply, or None when the capsule already has one (nothing written)."""
    params = {"id": id, "capsule_id": capsule_id, "author": author, "text": text, "emoji": emoji}
    row = (await conn.execute(_INSERT_REPLY, params)).first()
    return ReplyRow(**row._mapping) if row else None


# --- shares --------------------------------------------------------------------------------------

SHARE_COLUMNS = "id, capsule_id, token, kind, sender_name, created_by, created_at"


@dataclass(frozen=True, slots=True)
class ShareRow:
    id: uuid.UUID
    capsule_id: uuid.UUID
    token: str
    kind: str
    sender_name: str | None
    created_by: uuid.UUID
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SharedRow:
    """What the public read needs: the share, its capsule's unlock time and anonymity, its theme."""

    kind: str
    sender_name: str | None
    unlocks_at: datetime
    anonymous: bool
    theme: ThemeRow | None


# capsule_shares_token_key, then capsules_pkey and themes_pkey: one row, three index look-ups.
# A deleted capsule's shares answer nothing.
SHARED = text(
    "SELECT s.kind, s.sender_name, c.unlocks_at, c.anonymous, "
    "t.id AS theme_id, t.name, t.description, t.gradient_start, t.gradient_end, t.premium "
    "FROM capsule_shares s JOIN capsules c ON c.id = s.capsule_id AND c.deleted_at IS NULL "
    "LEFT JOIN themes t ON t.id = c.theme_id WHERE s.token = :token"
)
# capsule_shares_capsule_idx (index-only count of one capsule's shares).
LIVE_SHARES = text("SELECT count(*) FROM capsule_shares WHERE capsule_id = :capsule_id")
# capsule_shares_pkey: an idempotent retry answers the share its key created.
SHARE_BY_ID = text(f"SELECT {SHARE_COLUMNS} FROM capsule_shares WHERE id = :id")
# capsule_shares_token_key, then capsules_pkey: only the capsule's recipient revokes, only a share
# of that capsule.
REVOKE_SHARE = text(
    "DELETE FROM capsule_shares s USING capsules c "
    "WHERE s.token = :token AND s.capsule_id = :capsule_id AND c.id = s.capsule_id "
    "AND c.recipient_user = :caller AND c.deleted_at IS NULL RETURNING s.id"
)


async def shared(conn: AsyncConnection, token: str) -> SharedRow | None:
    row = (await conn.execute(SHARED, {"token": token})).first()
    if row is None:
        return None
    theme = None
    if row.theme_id is not None:
        theme = ThemeRow(row.theme_id, row.name, row.description, row.gradient_start, row.gradient_end, row.premium)
    return SharedRow(row.kind, row.sender_name, row.unlocks_at, row.anonymous, theme)


async def live_shares(conn: AsyncConnection, capsule_id: uuid.UUID) -> int:
    return int((await conn.execute(LIVE_SHARES, {"capsule_id": capsule_id})).scalar_one())


async def share_by_id(conn: AsyncConnection, share_id: uuid.UUID) -> ShareRow | None:
    row = (await conn.execute(SHARE_BY_ID, {"id": share_id})).first()
    return ShareRow(**row._mapping) if row else None


async def insert_share(
    conn: AsyncConnection,
    *,
    id: uuid.UUID,
    capsule_id: uuid.UUID,
    token: str,
    kind: str,
    sender_name: str | None,
    created_by: uuid.UUID,
) -> ShareRow:
    row = (
        await conn.execute(
            text(
                "INSERT INTO capsule_shares (id, capsule_id, token, kind, sender_name, created_by) "
                f"VALUES (:id, :capsule_id, :token, :kind, :sender_name, :created_by) RETURNING {SHARE_COLUMNS}"
            ),
            {
                "id": id,
                "capsule_id": capsule_id,
                "token": token,
                "kind": kind,
                "sender_name": sender_name,
                "created_by": created_by,
            },
        )
    ).one()
    return ShareRow(**row._mapping)


async def revoke_share(conn: AsyncConnection, *, capsule_id: uuid.UUID, token: str, caller: uuid.UUID) -> bool:
    """Deletes the share (a revoked token is gone for good); False when there was none to revoke."""
    params = {"capsule_id": capsule_id, "token": token, "caller": caller}
    return (await conn.execute(REVOKE_SHARE, params)).first() is not None
