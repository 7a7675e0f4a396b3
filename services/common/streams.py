"""Consuming the mesh's Redis streams in a consumer group, at least once (SPEC §14): the one loop
behind every consumer — the notifications service's (services/notifications/consumers.py) and
each service's share of the account-deletion saga (services/common/erasure.py,
services/auth/deletion.py). What an entry means is the `handle` callback's business; this module
only guarantees that nothing is lost and nothing is acknowledged before it was handled.

One pass of a consumer:

    XAUTOCLAIM stream group me <idle> …   entries another consumer read and did not ack for
                                         <idle> ms (it died, or hangs): taken over
    XREADGROUP GROUP group me BLOCK … >  new entries (first its own pending ones, "0", once at
                                         start: what this same instance read before a restart)
    handle(entries)                      the caller's transaction(s): must be idempotent
    XACK stream group <ids>

Where a kill lands:
- before `handle` committed: nothing written; the entries stay pending in the group and are read
  again (by this instance after its restart, or by another's XAUTOCLAIM after the idle time);
- between `handle`'s commit and the XACK: the entries are delivered again and handled again,
  which must change nothing (an insert keyed by the event id, a conditional update);
- after the XACK: done.
The failpoints `consumer.read` (entries delivered, nothing handled) and `consumer.handled`
(handled, not acked) are these two windows (services/common/failpoints.py).
A consumer that is only slow (past the idle time) may have its entries taken over while it still
works on them: both handle them, which idempotence makes safe.

Whatever `handle` cannot parse it must skip (log, count, return normally): an entry that raises
stays pending and is retried, so only failures worth retrying (the database away) may raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as redis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from services.common.failpoints import failpoint
from services.common.settings import ConsumerSettings

log = logging.getLogger(__name__)

Fields = Mapping[bytes | str, bytes | str]
Entry = tuple[str, Fields]
Handle = Callable[[Sequence[Entry]], Awaitable[None]]

CLAIMED = Counter(
    "stream_entries_claimed_total", "Entries taken over from a consumer that did not ack them", ["stream", "group"]
)
LAG = Gauge("stream_consumer_lag", "Entries of the stream not yet delivered to the group", ["stream", "group"])
PENDING = Gauge("stream_consumer_pending", "Entries delivered to the group and not yet acked", ["stream", "group"])
FAILED = Counter(
    "stream_consumer_failures_total", "Consumer passes that failed (Redis or Postgres): retried", ["stream", "group"]
)


class GroupConsumer:
    """One stream, one consumer of `group` (see the module doc)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str,
        group: str,
        consumer: str,
        handle: Handle,
        batch_size: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        retry_seconds: float = 1.0,
        metrics_interval_seconds: float = 5.0,
    ) -> None:
        self.redis = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.handle = handle
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.retry_seconds = retry_seconds
        self.metrics_interval = metrics_interval_seconds
        self._claim_cursor = "0-0"
        self._metrics_at = 0.0

    @classmethod
    def of(
        cls, client: redis.Redis, settings: ConsumerSettings, *, stream: str, group: str, handle: Handle
    ) -> GroupConsumer:
        """This instance's consumer of `stream` in `group`, as the service's STREAM_* settings say."""
        return cls(
            client,
            stream=stream,
            group=group,
            consumer=settings.name,
            handle=handle,
            batch_size=settings.batch_size,
            block_ms=settings.block_ms,
            claim_idle_ms=settings.claim_idle_ms,
        )

    async def ensure_group(self) -> None:
        """The group, from the stream's start ("0": entries published before this consumer first
        ran are handled too), creating the stream if it does not exist yet."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        fields = {"stream": self.stream, "group": self.group, "consumer": self.consumer}
        log.info("consumer started", extra={"fields": fields})
        own_pending = True  # first what this consumer name read and never acked (a restart)
        while not stop.is_set():
            try:
                if own_pending:
                    await self.ensure_group()
                    own_pending = await self.read_own_pending()
                    continue
                await self.claim_stale()
                await self.read_new()
                await self._observe()
            except (RedisError, OSError, ConnectionError, OperationalError, InterfaceError, DBAPIError) as exc:
                FAILED.labels(self.stream, self.group).inc()
                log.warning("consumer pass failed", extra={"fields": {**fields, "error": type(exc).__name__}})
                if "NOGROUP" in str(exc):
                    own_pending = True  # the stream was deleted: create the group again
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.retry_seconds)
        log.info("consumer stopped", extra={"fields": fields})

    async def read_own_pending(self) -> bool:
        """One batch of this consumer's own pending entries; whether there may be more."""
        answer = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=self.batch_size)
        entries = _entries(answer)
        await self._handle(entries)
        return len(entries) >= self.batch_size

    async def claim_stale(self) -> int:
        """Take over entries pending longer than the idle time (a consumer that died before its ack)."""
        answer = await self.redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=self.batch_size,
        )
        # [next cursor, entries, (Redis 7) ids that no longer exist]; a deleted entry comes back as
        # (id, None) on Redis 6.2.
        self._claim_cursor = _str(answer[0])
        entries = [(_str(i), f) for i, f in answer[1] if f is not None]
        if entries:
            CLAIMED.labels(self.stream, self.group).inc(len(entries))
            log.info("took over stale entries", extra={"fields": {"stream": self.stream, "count": len(entries)}})
            await self._handle(entries)
        return len(entries)

    async def read_new(self) -> int:
        answer = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.batch_size, block=self.block_ms
        )
        entries = _entries(answer)
        await self._handle(entries)
        return len(entries)

    async def _handle(self, entries: Sequence[Entry]) -> None:
        """Handle the entries, then ack them all: nothing is acked unless handled."""
        if not entries:
            return
        # Delivered to this consumer (pending in its name), nothing done: only a re-read or a
        # takeover can bring them back.
        failpoint("consumer.read")
        await self.handle(entries)
        # Handled and committed: a kill here leaves the entries pending; handled again, they
        # change nothing.
        failpoint("consumer.handled")
        await self.redis.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])

    async def _observe(self) -> None:
        """The group's lag and pending count (XINFO GROUPS: one cheap call every few seconds)."""
        now = time.monotonic()
        if now - self._metrics_at < self.metrics_interval:
            return
        self._metrics_at = now
        for group in await self.redis.xinfo_groups(self.stream):
            if _str(group.get("name", "")) == self.group:
                PENDING.labels(self.stream, self.group).set(int(group.get("pending") or 0))
                lag = group.get("lag")
                if lag is not None:
                    LAG.labels(self.stream, self.group).set(int(lag))


def text_field(fields: Fields, name: str) -> str:
    """One field of an entry as text (KeyError when it is missing)."""
    value = fields.get(name.encode(), fields.get(name))
    if value is None:
        raise KeyError(name)
    return value.decode() if isinstance(value, bytes) else value


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(answer: Any) -> list[Entry]:
    """XREADGROUP's answer for one stream → [(entry id, fields)]. A pending entry trimmed from the
    stream since it was read comes back without fields: `handle` sees it as malformed (skips it),
    so it does not stay pending for ever."""
    return [(_str(entry_id), fields or {}) for _stream, entries in answer or [] for entry_id, fields in entries]


def streams_client(redis_url: str, block_ms: int) -> redis.Redis:
    """A Redis client of its own for the consumers: XREADGROUP blocks up to block_ms, longer than
    the cache client's socket timeout."""
    return redis.from_url(redis_url, socket_timeout=block_ms / 1000 + 5, socket_connect_timeout=3)
