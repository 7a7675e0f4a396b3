"""The notifications a user reads (SPEC §14), as plain async code: the list, marking read, the
unread count. The rows are made by the consumers (consumers.py); here they are only read and marked.

Rules:
- a caller sees and marks only their own notifications: ids of anyone else's change nothing, and
  an `up_to` that is not the caller's is NOT_FOUND (nothing tells whether it exists);
- MarkRead takes exactly one of `ids` (1 to 100 UUIDs) and `up_to`; marking again changes
  nothing (only unread rows are updated, so `marked` counts real changes).

The unread count is `count(*)` over the partial index of unread rows (notifications_unread_idx),
not a counter: it is exact by construction (no second row to keep in step with inserts and marks,
no drift after a crash between the two), and its cost is the number of unread rows of one user,
which reading them brings back down. Nothing is cached: an index-only count of a few rows costs
about what a Redis round trip does, and a copy would need invalidating on every insert.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from services.common import validation
from services.common.db import Database
from services.common.errors import NotFound
from services.common.pagination import Page, page_after, page_size, take_page
from services.common.tokens import Caller
from services.notifications import storage
from services.notifications.storage import NotificationRow

LIST_NAME = "notifications"


@dataclass(frozen=True, slots=True)
class Marked:
    marked: int
    unread_count: int


class Notifications:
    def __init__(self, *, db: Database) -> None:
        self.db = db

    async def list(self, caller: Caller, requested_size: int, token: str) -> Page[NotificationRow]:
        size = page_size(requested_size)
        (after,) = page_after(token, LIST_NAME, uuid.UUID, caller=caller.user_id) or (None,)
        rows = await self.db.read_may_lag(
            lambda conn: storage.list_notifications(conn, caller.user_id, after=after, limit=size + 1),
            users=(caller.user_id,),
        )
        page, next_token = take_page(rows, size, LIST_NAME, _by_id, caller=caller.user_id)
        return Page(page, next_token)

    async def unread_count(self, caller: Caller) -> int:
        return await self.db.read_may_lag(
            lambda conn: storage.unread_count(conn, caller.user_id), users=(caller.user_id,)
        )

    async def mark_read(self, caller: Caller, ids: Sequence[str], up_to: str) -> Marked:
        # Exactly one of ids and up_to, each id a UUID, at most 100: MarkReadRequest's declared rules.
        # At most 100 ids, each a UUID, and up_to a UUID: MarkReadRequest's declared rules.
        parsed = [validation.resource_id(value, f"ids[{i}]") for i, value in enumerate(ids)]
        target = validation.optional_id(up_to, "up_to")
        me = caller.user_id
        async with self.db.write(touching=(me,)) as conn:
            if target is not None:
                if not await storage.owned(conn, me, target):
                    raise NotFound("no such notification", violations=[("up_to", "no such notification")])
                marked = await storage.mark_up_to(conn, me, target)
            else:
                marked = await storage.mark_ids(conn, me, list(dict.fromkeys(parsed)))
            # In the same transaction: the count the caller gets includes this very change.
            count = await storage.unread_count(conn, me)
        return Marked(marked, count)


def _by_id(row: NotificationRow) -> list[uuid.UUID]:
    return [row.id]
