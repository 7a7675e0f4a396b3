"""The background unlocker (SPEC §6): publishes one "capsule ready" event per capsule whose unlock
time has come, for notifications. Status never depends on it (it is derived from the clock at read
time); the event is only the nudge.

Every serving instance runs it (CAPSULE_UNLOCKER_ENABLED, default on), and `python -m
services.capsules unlocker` runs it alone. Several at once are safe:

    loop:  BEGIN
           SELECT id, recipient_user, sender, unlocks_at FROM capsules
            WHERE unlocks_at <= now AND unlocked_event_at IS NULL AND deleted_at IS NULL
            ORDER BY unlocks_at LIMIT batch FOR UPDATE SKIP LOCKED      (capsules_unlocker_idx)
           publish the batch to the Redis stream (one Lua script)
           UPDATE capsules SET unlocked_event_at = now WHERE id = ANY(batch)
           COMMIT

- SKIP LOCKED: concurrent unlockers take disjoint batches, none waits for another.
- Exactly once: the publish happens before the COMMIT, so a commit that fails (connection lost,
  process killed between the two) leaves the rows unmarked and another pass publishes them again.
  A stream entry id cannot be chosen per capsule, so the script dedupes instead: for each capsule
  it `SET <stream>:sent:<capsule id> NX EX <ttl>` and XADDs only when that marker was new — marker
  and entry are written atomically (one script), so a capsule is in the stream at most once while
  its marker lives (7 days by default, far longer than any retry), and at least once because its
  row stays unmarked until the publish succeeded.
- Failpoint `unlocker.published` (services/common/failpoints.py): dead after the script ran, before
  the COMMIT — the widest window of the two writes (tests/notifications/test_crash_exactly_once.py).
- Redis down: the script fails, the transaction rolls back, the batch is retried next pass.
- Deleted capsules are never announced (deleted_at IS NULL in the scan). A capsule edited to a
  later unlock time before it was announced simply waits for that time.

The stream is bounded (XADD MAXLEN ~ CAPSULE_READY_STREAM_MAX_LENGTH, default 1,000,000): the
notifier is expected to keep up (consumer group), the bound only keeps a stalled one from filling
Redis.

Event fields: capsule_id, recipient_user, sender, unlocks_at (RFC 3339). The sender is there for
the notifier to decide what to show; anonymity is for it to respect.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import redis.asyncio as redis
import uvloop
from prometheus_client import Counter, Gauge

from services.capsules import storage
from services.capsules.settings import CapsulesSettings
from services.common.background import sweep
from services.common.db import Database
from services.common.failpoints import failpoint
from services.common.logs import configure_logging

log = logging.getLogger(__name__)

PUBLISHED = Counter("capsule_ready_events_total", "Capsule-ready events published by the unlocker")
# The backlog, at no extra query: the batch is taken oldest first, so its first row is the oldest
# due capsule not yet announced (among those no other unlocker holds). Set before the publish, so
# a pass that fails (Redis away) still reports a backlog that grows; 0 when nothing is due. A
# healthy unlocker keeps it near its interval; the CapsuleUnlockerBacklog alert watches it.
OLDEST_DUE = Gauge(
    "capsule_unlocker_oldest_due_seconds",
    "Age of the oldest due capsule not yet announced, as seen by the unlocker's last pass (0: none due)",
)

# KEYS[1] the stream; ARGV[1] marker ttl, ARGV[2] the stream's approximate length bound, then 4
# values per capsule: id, recipient_user, sender, unlocks_at. Returns how many entries were added.
_PUBLISH_LUA = """
local added = 0
for i = 3, #ARGV, 4 do
  if redis.call('SET', KEYS[1] .. ':sent:' .. ARGV[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'capsule_id', ARGV[i],
               'recipient_user', ARGV[i + 1], 'sender', ARGV[i + 2], 'unlocks_at', ARGV[i + 3])
    added = added + 1
  end
end
return added
"""


class Unlocker:
    def __init__(
        self,
        db: Database,
        redis_client: redis.Redis,
        *,
        stream: str,
        batch_size: int = 100,
        interval_seconds: float = 1.0,
        marker_ttl_seconds: int = 7 * 24 * 3600,
        stream_max_length: int = 1_000_000,
        publish_timeout_seconds: float = 2.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.redis = redis_client
        self.stream = stream
        self.batch_size = batch_size
        self.interval = interval_seconds
        self.marker_ttl = marker_ttl_seconds
        self.max_length = stream_max_length
        # The publish runs while the batch's rows are locked (FOR UPDATE): a Redis that does not
        # answer must not hold them, so the call is bounded whatever the client's own timeouts.
        self.publish_timeout = publish_timeout_seconds
        self.clock = clock
        self._publish = redis_client.register_script(_PUBLISH_LUA)

    async def run_once(self) -> int:
        """One batch: how many capsules were taken (published now or before)."""
        now = self.clock()
        async with self.db.write() as conn:
            due = await storage.lock_due(conn, now, self.batch_size)
            OLDEST_DUE.set((now - due[0].unlocks_at).total_seconds() if due else 0.0)
            if not due:
                return 0
            args: list[str] = [str(self.marker_ttl), str(self.max_length)]
            for row in due:
                args += [str(row.id), str(row.recipient_user), str(row.sender), row.unlocks_at.isoformat()]
            published = self._publish(keys=[self.stream], args=args)
            added = int(await asyncio.wait_for(published, self.publish_timeout))
            # In the stream, not yet marked: a death here is what the marker must make harmless.
            failpoint("unlocker.published")
            await storage.mark_published(conn, [row.id for row in due], now)
        PUBLISHED.inc(added)
        return len(due)

    async def run(self, stop: asyncio.Event) -> None:
        await sweep(
            stop,
            "unlocker",
            self.run_once,
            interval=self.interval,
            batch_size=self.batch_size,
            fields={"stream": self.stream},
        )


async def run_standalone() -> None:
    settings = CapsulesSettings.from_env()
    configure_logging(settings.service.log_level)
    # It only writes: no replica pool (DATABASE_REPLICA_URLS, if set for the service, is not used).
    db = Database(replace(settings.service.database, replica_urls=()))
    client: redis.Redis = redis.from_url(settings.service.redis_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    unlocker = Unlocker(
        db,
        client,
        stream=settings.ready_stream,
        batch_size=settings.unlocker_batch_size,
        interval_seconds=settings.unlocker_interval_seconds,
        marker_ttl_seconds=settings.ready_marker_ttl_seconds,
        stream_max_length=settings.ready_stream_max_length,
    )
    try:
        await unlocker.run(stop)
    finally:
        await client.aclose()
        await db.close()


def main() -> None:
    uvloop.run(run_standalone())
