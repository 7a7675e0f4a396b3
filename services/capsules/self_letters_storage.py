"""SQL of self letters (SPEC §13): the `self_letters` table of migration 0002_self_letters.

Each statement is a public name so that tests/capsules/test_query_plans.py EXPLAINs exactly what
the service sends; the index each one relies on is named next to it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

COLUMNS = "id, author, title, body, mood, life_area, city, opens_at, created_at, opened_at, reflection, reflected_at"


@dataclass(frozen=True, slots=True)
class SelfLetterRow:
    id: uuid.UUID
    author: uuid.UUID
    title: str
    body: str
    mood: str
    life_area: str  # self | work | family | money | health
    city: str
    opens_at: datetime
    created_at: datetime
    opened_at: datetime | None
    reflection: str | None  # yes | no | skipped, once
    reflected_at: datetime | None


_INSERT = text(
    "INSERT INTO self_letters (id, author, title, body, mood, life_area, city, opens_at) "
    f"VALUES (:id, :author, :title, :body, :mood, :life_area, :city, :opens_at) RETURNING {COLUMNS}"
)


async def insert(
    conn: AsyncConnection,
    *,
    id: uuid.UUID,
    author: uuid.UUID,
    title: str,
    body: str,
    mood: str,
    life_area: str,
    city: str,
    opens_at: datetime,
) -> SelfLetterRow:
    values = {
        "id": id,
        "author": author,
        "title": title,
        "body": body,
        "mood": mood,
        "life_area": life_area,
        "city": city,
        "opens_at": opens_at,
    }
    return SelfLetterRow(**(await conn.execute(_INSERT, values)).one()._mapping)


# Primary key look-ups (self_letters_pkey); the caller checks the author. FOR UPDATE: open and
# reflect decide on the row they hold, so two of them at once are serialised on it.
LETTER = text(f"SELECT {COLUMNS} FROM self_letters WHERE id = :id")
_LETTER_FOR_UPDATE = text(f"SELECT {COLUMNS} FROM self_letters WHERE id = :id FOR UPDATE")


async def letter(conn: AsyncConnection, letter_id: uuid.UUID, *, for_update: bool = False) -> SelfLetterRow | None:
    row = (await conn.execute(_LETTER_FOR_UPDATE if for_update else LETTER, {"id": letter_id})).first()
    return SelfLetterRow(**row._mapping) if row else None


_MARK_OPENED = text(f"UPDATE self_letters SET opened_at = :now WHERE id = :id RETURNING {COLUMNS}")


async def mark_opened(conn: AsyncConnection, letter_id: uuid.UUID, now: datetime) -> SelfLetterRow:
    return SelfLetterRow(**(await conn.execute(_MARK_OPENED, {"id": letter_id, "now": now})).one()._mapping)


_REFLECT = text(f"UPDATE self_letters SET reflection = :answer, reflected_at = :now WHERE id = :id RETURNING {COLUMNS}")


async def reflect(conn: AsyncConnection, letter_id: uuid.UUID, answer: str, now: datetime) -> SelfLetterRow:
    row = (await conn.execute(_REFLECT, {"id": letter_id, "answer": answer, "now": now})).one()
    return SelfLetterRow(**row._mapping)


# The author's list, newest first: self_letters_author_idx (author, id), scanned backwards from the
# keyset position (the last id of the previous page; the largest UUID for the first page).
LIST = text(f"SELECT {COLUMNS} FROM self_letters WHERE author = :author AND id < :before ORDER BY id DESC LIMIT :limit")
FIRST_PAGE = uuid.UUID(int=(1 << 128) - 1)


async def list_letters(
    conn: AsyncConnection, author: uuid.UUID, *, before: uuid.UUID | None, limit: int
) -> list[SelfLetterRow]:
    rows = await conn.execute(LIST, {"author": author, "before": before or FIRST_PAGE, "limit": limit})
    return [SelfLetterRow(**r._mapping) for r in rows]
