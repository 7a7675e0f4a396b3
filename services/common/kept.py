"""Copies of records kept in this process, keyed by id, dropped when their owner says they changed.

The mechanism behind every in-process copy of a record (profiles in services.common.people, the
auth service's own users): a bounded, time-limited map id → value whose entries are dropped by the
change messages of one channel of the process's ChangeFeed, and trusted only while that feed is
(services/common/changefeed.py states the guarantee: the next read after a change, on any
instance, does not see the old value).

    copies = KeptCopies(feed, channel, "profile_copy", ttl_seconds=300)
    if await copies.trusted():
        found, missing = copies.get_many(ids)
        mark = copies.mark()
        loaded = ...load missing...
        copies.keep(loaded, mark)   # refused if a change or a reset happened since mark()

A message names one id (its text form); an unreadable one drops everything.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

from services.common.changefeed import ChangeFeed
from services.common.ids import parse_uuid
from services.common.telemetry import CACHE_REQUESTS

V = TypeVar("V")


class KeptCopies(Generic[V]):
    def __init__(
        self,
        feed: ChangeFeed,
        channel: str,
        metric_name: str,
        *,
        ttl_seconds: float,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._feed = feed
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._copies: OrderedDict[uuid.UUID, tuple[V, float]] = OrderedDict()
        self._changes = 0  # bumped by every change message and reset
        self._hits = CACHE_REQUESTS.labels(metric_name, "hit")
        self._misses = CACHE_REQUESTS.labels(metric_name, "miss")
        feed.subscribe(channel, self._changed, self._forget_all)

    async def trusted(self) -> bool:
        """Apply every change already delivered; whether copies may be used now."""
        return await self._feed.catch_up()

    def get_many(self, ids: Iterable[uuid.UUID]) -> tuple[dict[uuid.UUID, V], list[uuid.UUID]]:
        """(fresh copies, ids without one); only after `trusted()` said yes."""
        now = self._clock()
        found: dict[uuid.UUID, V] = {}
        missing: list[uuid.UUID] = []
        for key in ids:
            copy = self._copies.get(key)
            if copy is not None and copy[1] > now:
                found[key] = copy[0]
            else:
                missing.append(key)
        self._hits.inc(len(found))
        self._misses.inc(len(missing))
        return found, missing

    def mark(self) -> tuple[int, int]:
        """Taken before loading what was missing."""
        return self._feed.epoch, self._changes

    def keep(self, values: Mapping[uuid.UUID, V], mark: tuple[int, int]) -> None:
        """Keep what was loaded since `mark`, unless a change or a reset came in meanwhile (the
        load may predate a change this process was already told about)."""
        if mark != (self._feed.epoch, self._changes) or not self._feed.healthy:
            return
        expires = self._clock() + self._ttl
        for key, value in values.items():
            self._copies[key] = (value, expires)
        while len(self._copies) > self._max_entries:
            self._copies.popitem(last=False)

    def drop(self, key: uuid.UUID) -> None:
        """This process changed the record itself: forget it now (the message follows)."""
        self._changes += 1
        self._copies.pop(key, None)

    def _changed(self, data: bytes) -> None:
        key = parse_uuid(data.decode("ascii", "replace"))
        if key is None:
            self._forget_all()
        else:
            self.drop(key)

    def _forget_all(self) -> None:
        self._changes += 1
        self._copies.clear()
