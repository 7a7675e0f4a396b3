"""What changed elsewhere, for in-process caches: a Redis pub/sub subscription per process.

A service that keeps copies of another service's data in its own memory (e.g. the sender profiles
on an inbox page) must drop a copy as soon as the owner changes it. The owner publishes the id of
what changed on a channel (`publish`); every interested process holds one `ChangeFeed` subscribed to
it, which calls the handlers registered for that channel.

The guarantee, and how it is kept:
- Fresh reads: the owner publishes after its commit and before it answers. Redis queues the
  message for every subscriber and writes those queues, the owner's reply among them, in one pass
  at the end of its event-loop turn — but the owner's reply may go out first, and the owner, woken
  by it, may preempt Redis before the subscribers' writes (seen on a busy 2-core machine: a rename
  answered, the next inbox page still showed the old name). So after PUBLISH the owner makes one
  more round trip (PING): Redis reads that command in a later turn, after the whole pass is
  written, so when the owner answers the message sits in every subscriber's socket. A reader calls
  `catch_up()` before it trusts its copy: it applies whatever is waiting there (already read by
  the event loop or still in the kernel), so a message cannot sit unread behind the request that
  needs it.
- Lost messages: pub/sub keeps nothing for a disconnected subscriber. So a copy is trusted only
  while the feed is `healthy` — subscribed, and its periodic PING answered within
  3 ping intervals (a frozen or partitioned Redis is noticed within that bound) — and every
  (re)subscription calls the channel's `reset` handler, which must drop every copy: whatever
  changed while the feed was blind is forgotten with it. `epoch` changes on every reset, so a
  loader that fetched across a reset can tell and must not store what it fetched.
- A publish that fails (Redis unreachable from the owner) is retried until Redis takes it or
  until every subscriber must have noticed that it lost Redis too — a silence of 3 ping intervals
  (`SILENCE_LIMIT`) — and only then does the owner answer (`Publisher`): either the message was
  delivered, or every subscriber that shares the owner's view of Redis has dropped its copies. A
  change made during an outage therefore answers up to ANNOUNCE_WITHIN later (4 s by default):
  slower, never wrong. It is also kept and retried in the background after that.
Left open: a subscriber whose Redis connection stays healthy while the owner cannot reach Redis (a
partition between the owner and Redis only) trusts its copies until the retried publish arrives or
the copy's own TTL ends; the TTL of each cache bounds it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import select
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as redis
from prometheus_client import Counter, Gauge
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from services.common.background import cancel_and_wait

log = logging.getLogger(__name__)

FEED_HEALTHY = Gauge("changefeed_healthy", "1 while the change feed is subscribed and answering pings")
FEED_RESETS = Counter("changefeed_resets_total", "Times the change feed (re)subscribed and dropped every copy")
FEED_MESSAGES = Counter("changefeed_messages_total", "Change messages applied", ["channel"])
PUBLISH_RETRIES = Counter("changefeed_publish_retries_total", "Change messages published again after a failure")

# How often a subscriber pings Redis, and how long a silence makes it stop trusting its copies.
PING_INTERVAL_SECONDS = 1.0  # 4 wake-ups a second measured ~1 % of a core per idle process
SILENCE_LIMIT_SECONDS = 3 * PING_INTERVAL_SECONDS
# How long an owner keeps trying a failed announcement before it answers: the silence limit and
# one more interval, so every subscriber has stopped trusting its copies by then.
ANNOUNCE_WITHIN_SECONDS = SILENCE_LIMIT_SECONDS + PING_INTERVAL_SECONDS

Handler = Callable[[bytes], None]
Reset = Callable[[], None]


@dataclass(frozen=True)
class _Subscription:
    on_change: Handler
    on_reset: Reset


class ChangeFeed:
    def __init__(
        self, redis_url: str, *, ping_interval: float = PING_INTERVAL_SECONDS, reconnect_delay: float = 0.5
    ) -> None:
        # No socket timeout: the connection mostly waits; liveness comes from our own pings.
        self._client: redis.Redis = redis.from_url(redis_url, socket_connect_timeout=ping_interval)
        self._pubsub: PubSub | None = None
        self._subscriptions: dict[str, _Subscription] = {}
        self._ping_interval = ping_interval
        self._reconnect_delay = reconnect_delay
        self._lock = asyncio.Lock()  # one reader of the connection at a time
        self._healthy = False
        # When the PING behind the last PONG was sent: a lower bound of when Redis last answered,
        # so a silence is never under-estimated (PONGs are read a little after they arrive).
        self._last_pong = 0.0
        self._pings_sent: collections.deque[float] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self.epoch = 0

    def subscribe(self, channel: str, on_change: Handler, on_reset: Reset) -> None:
        """Register before `start()`: `on_change(data)` per message, `on_reset()` on every
        (re)subscription and every loss of the feed."""
        self._subscriptions[channel] = _Subscription(on_change, on_reset)

    @property
    def healthy(self) -> bool:
        """Whether copies may be trusted now. A feed found silent (no pong for three ping
        intervals) is declared lost right here, copies dropped: were the pongs to resume later on
        the same connection, nothing would otherwise tell the copies that they lived through a
        blind spell."""
        if self._healthy and time.monotonic() - self._last_pong >= 3 * self._ping_interval:
            self._lost(TimeoutError("no answer to the change feed's ping"))
        return self._healthy

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def catch_up(self) -> bool:
        """Apply every change already delivered to this process; True if copies may be trusted."""
        if not self.healthy or self._pubsub is None:
            return False
        async with self._lock:
            try:
                await self._drain(self._pubsub)
            except (RedisError, OSError) as exc:
                self._lost(exc)
        return self.healthy

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        await self._disconnect()
        await self._client.aclose()

    # --- the connection's life ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._connect()
                while self.healthy:
                    await asyncio.sleep(self._ping_interval)
                    async with self._lock:
                        assert self._pubsub is not None
                        await self._drain(self._pubsub)
                        self._pings_sent.append(time.monotonic())
                        await self._pubsub.ping()
            except (RedisError, OSError) as exc:
                self._lost(exc)
            await self._disconnect()
            await asyncio.sleep(self._reconnect_delay)

    async def _connect(self) -> None:
        pubsub = self._client.pubsub()
        self._pubsub = pubsub
        await pubsub.subscribe(*self._subscriptions)
        # Trusted only once Redis confirmed every subscription: from then on no change is missed.
        confirmed = 0
        deadline = time.monotonic() + 3 * self._ping_interval
        while confirmed < len(self._subscriptions):
            message = await pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message is None:
                raise TimeoutError("the change feed's subscription was not confirmed")
            if message["type"] == "subscribe":
                confirmed += 1
        self._reset()
        self._pings_sent.clear()
        self._last_pong = time.monotonic()
        self._healthy = True
        FEED_HEALTHY.set(1)
        log.info("change feed subscribed", extra={"fields": {"channels": list(self._subscriptions)}})

    async def _drain(self, pubsub: PubSub) -> None:
        connection = pubsub.connection
        if connection is None:
            return
        # Every read of a kept copy comes through here, so the common case — nothing pending —
        # must be cheap: can_read() looks at what the event loop already took off the socket
        # (~2 µs), and a poll of the socket itself at what the kernel holds that the loop has not
        # read yet (~2 µs). Only when the kernel holds something do we yield once to the loop,
        # which moves it into the reader; get_message(timeout=0) alone would cost ~20 µs a call.
        if not await connection.can_read():
            if not _kernel_has_data(connection):
                return
            await asyncio.sleep(0)
        while await connection.can_read():
            message = await pubsub.get_message(timeout=0)
            if message is None:
                return
            kind = message["type"]
            if kind == "pong":
                self._last_pong = self._pings_sent.popleft() if self._pings_sent else time.monotonic()
            elif kind == "message":
                channel = message["channel"]
                name = channel.decode() if isinstance(channel, bytes) else str(channel)
                subscription = self._subscriptions.get(name)
                if subscription is not None:
                    FEED_MESSAGES.labels(name).inc()
                    subscription.on_change(message["data"])

    def _lost(self, exc: BaseException) -> None:
        if not self._healthy:
            return  # already blind, copies already dropped
        log.warning("change feed lost; in-process copies dropped", extra={"fields": {"error": str(exc)}})
        self._healthy = False
        FEED_HEALTHY.set(0)
        self._reset()

    def _reset(self) -> None:
        self.epoch += 1
        FEED_RESETS.inc()
        for subscription in self._subscriptions.values():
            subscription.on_reset()

    async def _disconnect(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()


def _kernel_has_data(connection: object) -> bool:
    """Whether the connection's socket has bytes the event loop has not read yet. redis-py keeps
    its StreamWriter private: without it, assume there may be (the caller then yields once)."""
    writer = getattr(connection, "_writer", None)
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class Publisher:
    """The owner's side: announce a change after its commit (see the module doc for why a failed
    announcement holds the answer for up to `announce_within`)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        retry_delay: float = 0.05,
        announce_within: float = ANNOUNCE_WITHIN_SECONDS,
        background_retry_delay: float = 0.5,
    ) -> None:
        self._client = client
        self._retry_delay = retry_delay
        self._announce_within = announce_within
        self._background_retry_delay = background_retry_delay
        self._pending: dict[tuple[str, bytes], None] = {}
        self._retrying: asyncio.Task[None] | None = None

    async def publish(self, channel: str, data: bytes) -> None:
        # Measured from the first failure: a subscriber's last pong came before Redis stopped
        # answering, so by then its silence is at least as long.
        give_up_at: float | None = None
        while True:
            try:
                await self._client.publish(channel, data)
                await self._client.ping()  # the publish pass is written out (module doc)
                return
            except (RedisError, OSError) as exc:
                now = time.monotonic()
                if give_up_at is None:
                    give_up_at = now + self._announce_within
                if now >= give_up_at:
                    log.warning(
                        "change not announced; subscribers have stopped trusting their copies; retrying later",
                        extra={"fields": {"error": str(exc)}},
                    )
                    self._retry_later(channel, data)
                    return
            await asyncio.sleep(self._retry_delay)

    def _retry_later(self, channel: str, data: bytes) -> None:
        self._pending[(channel, data)] = None
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(self._retry())

    async def _retry(self) -> None:
        while self._pending:
            await asyncio.sleep(self._background_retry_delay)
            for channel, data in list(self._pending):
                try:
                    await self._client.publish(channel, data)
                except (RedisError, OSError):
                    break
                PUBLISH_RETRIES.inc()
                self._pending.pop((channel, data), None)

    async def close(self) -> None:
        if self._retrying is not None:
            await cancel_and_wait(self._retrying)
