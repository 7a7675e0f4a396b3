"""Inbox and outbox pages kept in this process (SPEC §9: capsule metadata, 1 minute).

What is kept: the rows of an unfiltered page (`box`, no status filter) for one owner, page size and
keyset position, plus whether a next page exists. Never a rendered answer: what a caller may see of
a row — status, body, sender — is worked out from the clock at every read (capsules.view), so a
kept page can never show a sealed body or a status from the past. Pages filtered by status are not
kept: which rows they hold changes with the clock alone.

How a page stops being served once it changed: every write that changes a capsule (send, edit,
delete, open) names the owners whose pages changed — the recipient's inbox and the sender's outbox
— on the capsules' change channel after its commit and before it answers (`publish`). Each
instance's ChangeFeed drops those owners' pages, and a reader catches up with the feed before using
a kept page, so the next page read after a write, on any instance, shows it
(services/common/changefeed.py states the guarantee and what happens when Redis is away: no page is
trusted and every read goes to Postgres). A load that a change overtook is not kept.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from services.capsules.storage import CapsuleRow
from services.common.changefeed import ChangeFeed, Publisher
from services.common.telemetry import CACHE_REQUESTS

_HITS = CACHE_REQUESTS.labels("capsule_page", "hit")
_MISSES = CACHE_REQUESTS.labels("capsule_page", "miss")

PageKey = tuple[uuid.UUID, str, int, tuple[object, ...] | None]  # owner, box, size, after


@dataclass(frozen=True, slots=True)
class KeptPage:
    rows: tuple[CapsuleRow, ...]  # up to size + 1: the extra row says a next page exists
    expires_at: float


def pages_channel(mesh_prefix: str) -> str:
    return f"{mesh_prefix}capsules:pages-changed"


class PageCopies:
    def __init__(
        self,
        feed: ChangeFeed,
        publisher: Publisher,
        mesh_prefix: str,
        *,
        ttl_seconds: float = 60.0,
        max_pages: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._feed = feed
        self._publisher = publisher
        self._channel = pages_channel(mesh_prefix)
        self._ttl = ttl_seconds
        self._max_pages = max_pages
        self._clock = clock
        self._pages: OrderedDict[PageKey, KeptPage] = OrderedDict()
        self._by_owner: dict[tuple[uuid.UUID, str], set[PageKey]] = {}
        self._changes = 0
        feed.subscribe(self._channel, self._changed, self._forget_all)

    async def get(self, key: PageKey) -> tuple[CapsuleRow, ...] | None:
        """The kept rows of a page, if they may be trusted now."""
        if key not in self._pages or not await self._feed.catch_up():
            _MISSES.inc()
            return None
        page = self._pages.get(key)  # again: catching up may have dropped it
        if page is None or page.expires_at <= self._clock():
            _MISSES.inc()
            return None
        self._pages.move_to_end(key)
        _HITS.inc()
        return page.rows

    def mark(self) -> tuple[int, int]:
        """Taken before loading a page from the database; `keep` refuses the load if it moved."""
        return self._feed.epoch, self._changes

    def keep(self, key: PageKey, rows: list[CapsuleRow], mark: tuple[int, int]) -> None:
        if mark != (self._feed.epoch, self._changes) or not self._feed.healthy:
            return
        self._pages[key] = KeptPage(tuple(rows), self._clock() + self._ttl)
        self._by_owner.setdefault((key[0], key[1]), set()).add(key)
        while len(self._pages) > self._max_pages:
            self._drop(next(iter(self._pages)))

    async def changed(self, *boxes: tuple[uuid.UUID, str]) -> None:
        """After a committed write: drop these (owner, box) pages here and on every instance."""
        for owner, box in boxes:
            self._forget(owner, box)
        for owner, box in dict.fromkeys(boxes):
            await self._publisher.publish(self._channel, f"{box}:{owner}".encode())

    def _changed(self, data: bytes) -> None:
        self._changes += 1
        box, _, owner = data.decode("ascii", "replace").partition(":")
        try:
            self._forget(uuid.UUID(owner), box)
        except ValueError:
            self._forget_all()  # a message we cannot read: trust nothing

    def _forget(self, owner: uuid.UUID, box: str) -> None:
        self._changes += 1
        for key in self._by_owner.pop((owner, box), ()):
            self._pages.pop(key, None)

    def _drop(self, key: PageKey) -> None:
        self._pages.pop(key, None)
        keys = self._by_owner.get((key[0], key[1]))
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_owner[(key[0], key[1])]

    def _forget_all(self) -> None:
        self._changes += 1
        self._pages.clear()
        self._by_owner.clear()
