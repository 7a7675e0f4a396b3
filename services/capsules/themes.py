"""The theme catalog (SPEC §6): seeded by the migration, read-only here, cached 1 hour.

The catalog only changes with a migration (a deploy), so entries are not invalidated by writes:
the TTL bounds how long a changed catalog takes to show. The gateway marks /v1/themes responses
`Cache-Control: public, max-age=3600` (SPEC §7).
"""

from __future__ import annotations

import uuid

import orjson

from services.capsules import storage
from services.capsules.storage import ThemeRow
from services.common import validation
from services.common.cache import Cache
from services.common.db import Database
from services.common.errors import NotFound
from services.common.pagination import Page, page_after, page_size, take_page

LIST_NAME = "themes"


def _encode(row: ThemeRow) -> dict[str, object]:
    return {name: getattr(row, name) for name in ThemeRow.__slots__}  # type: ignore[attr-defined]


def _decode(data: dict[str, object]) -> ThemeRow:
    return ThemeRow(**{**data, "id": uuid.UUID(str(data["id"]))})  # type: ignore[arg-type]


class Themes:
    def __init__(self, db: Database, cache: Cache, ttl_seconds: int = 3600) -> None:
        self.db = db
        self.cache = cache
        self.ttl = ttl_seconds

    async def get(self, theme_id: str) -> ThemeRow:
        tid = validation.resource_id(theme_id)

        async def load() -> bytes | None:
            # The catalog changes with releases (migrations), never under a caller: any replica will do.
            row = await self.db.read_may_lag(lambda conn: storage.theme(conn, tid))
            return orjson.dumps(_encode(row), default=str) if row else None

        raw = await self.cache.get_or_load("theme", self.cache.key("theme", str(tid)), self.ttl, load)
        if raw is None:
            raise NotFound("no theme with this id")
        return _decode(orjson.loads(raw))

    async def list(self, requested_size: int, token: str) -> Page[ThemeRow]:
        size = page_size(requested_size)
        after = page_after(token, LIST_NAME, str, uuid.UUID, caller=None)  # public: bound to the list only

        async def load() -> bytes:
            read = await self.db.read_may_lag(lambda conn: storage.list_themes(conn, after=after, limit=size + 1))
            rows, next_token = take_page(read, size, LIST_NAME, lambda r: [r.name, r.id], caller=None)
            return orjson.dumps({"rows": [_encode(r) for r in rows], "next": next_token}, default=str)

        key = self.cache.key("themes", str(size), token or "-")
        raw = await self.cache.get_or_load("themes", key, self.ttl, load)
        assert raw is not None
        data = orjson.loads(raw)
        return Page([_decode(r) for r in data["rows"]], data["next"])
