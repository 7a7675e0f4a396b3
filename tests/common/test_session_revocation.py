"""services.common.tokens.RevokedSessions (and auth's SessionRevoker) against a real redis-server of
the test's own: a revocation reaches another process by the next check, one made while a process
was away (restart, missed message) is found in Redis, the sids known stay refused when Redis goes,
and an unknown sid is let through then (fail open, counted) without a timeout per call."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import redis.asyncio as redis

from services.auth.sessions import SessionRevoker
from services.common.changefeed import ChangeFeed, Publisher
from services.common.tokens import REVOCATION_UNCHECKED, RevokedSessions
from tests.metrics import sample
from tests.ratelimit.redis_server import RedisServer

PING = 0.2


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_revocations_reach_other_processes_and_survive_a_restart_and_an_outage(
    redis_server: RedisServer,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    client = redis.from_url(redis_server.url, socket_timeout=0.2, socket_connect_timeout=0.2)
    publisher = Publisher(client, retry_delay=0.05, announce_within=4 * PING)
    feeds = [ChangeFeed(redis_server.url, ping_interval=PING, reconnect_delay=0.1) for _ in range(2)]
    owner, reader = (RevokedSessions(feed, client, prefix) for feed in feeds)
    for feed in feeds:
        feed.start()
    await eventually(lambda: all(feed.healthy for feed in feeds))
    revoker = SessionRevoker(client, publisher, owner, prefix, keep_seconds=60)
    late: RevokedSessions | None = None
    late_feed = ChangeFeed(redis_server.url, ping_interval=PING, reconnect_delay=0.1)
    try:
        ended = uuid.uuid4()
        await revoker.revoke(ended)
        assert await owner.is_revoked(str(ended))
        assert await reader.is_revoked(str(ended))  # the next check, no wait
        assert not await reader.is_revoked(str(uuid.uuid4()))

        # A process that starts afterwards (or missed the message) finds it in Redis.
        late = RevokedSessions(late_feed, client, prefix)
        late_feed.start()
        await eventually(lambda: late_feed.healthy)
        assert await late.is_revoked(str(ended))

        # Redis frozen: what is known stays refused; the unknown is let through, and promptly.
        redis_server.freeze()
        unchecked = sample(REVOCATION_UNCHECKED)
        await eventually(lambda: not feeds[1].healthy)
        assert await reader.is_revoked(str(ended))
        started = time.monotonic()
        for _ in range(20):
            assert not await reader.is_revoked(str(uuid.uuid4()))
        assert time.monotonic() - started < 1.0  # one timeout, then a back-off: not one per call
        assert sample(REVOCATION_UNCHECKED) - unchecked == 20
        redis_server.thaw()
        # Back: the feed resubscribes, the set is reloaded from Redis, checks are exact again.
        await eventually(lambda: all(feed.healthy for feed in (*feeds, late_feed)))
        await eventually(lambda: reader.complete and late is not None and late.complete)
        assert await reader.is_revoked(str(ended))
        assert not await reader.is_revoked(str(uuid.uuid4()))
        assert sample(REVOCATION_UNCHECKED) - unchecked == 20
    finally:
        redis_server.thaw()
        for revoked in (owner, reader, late):
            if revoked is not None:
                await revoked.close()
        for feed in (*feeds, late_feed):
            await feed.close()
        await publisher.close()
        await client.aclose()
