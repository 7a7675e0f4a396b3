"""The sender job: drains the push_deliveries queue (a background job on every serving instance).

One pass:

    BEGIN; claim up to `batch` due pending rows (SKIP LOCKED), count the attempt, lease them; COMMIT
    send each through its platform's provider (concurrently, outside any transaction)
    BEGIN; per outcome: delivered → state 'delivered' and the device's last_success_at
                        retry     → next_attempt_at = now + delay (the provider's Retry-After, else
                                    exponential back-off with jitter); at max_attempts: 'given_up'
                        dead      → the device deleted, its deliveries with it (ON DELETE CASCADE)
    COMMIT

A sender killed between the claim and the outcome leaves its rows leased: they come due again when
the lease ends, and are sent again (at least once: a push may be shown twice after a crash, never
lost). Rows are queued by the consumer in the notification's own transaction (consumers.py), so a
notification without its pushes cannot be committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.background import sweep
from services.common.db import Database
from services.notifications.push import storage
from services.notifications.push.base import Device, Message, Outcome, PushProvider, Result
from services.notifications.push.storage import Claimed

log = logging.getLogger(__name__)

SENT = Counter("push_sent_total", "Pushes the provider accepted", ["provider"])
FAILED = Counter("push_failed_total", "Push attempts answered 'try again later' (rescheduled)", ["provider"])
DEAD = Counter("push_dead_tokens_total", "Device tokens the provider reported dead (device dropped)", ["provider"])
GIVEN_UP = Counter("push_given_up_total", "Pushes abandoned after the last attempt", ["provider"])

# What a push says per notification kind: no names, no letter text (base.Message).
TITLES = {
    "capsule_ready": ("A letter is ready", "A time capsule sent to you can be opened now."),
    "connection_request_received": ("New connection request", "Someone wants to connect with you."),
    "connection_request_accepted": ("Request accepted", "Your connection request was accepted."),
    "reply_received": ("New reply", "Someone replied to a letter you sent."),
    "thought_received": ("Someone is thinking of you", "A connection sent you a thought."),
    "invite_claimed": ("Invite claimed", "Someone claimed the invite to your letter."),
}


def message_of(row: Claimed) -> Message:
    title, body = TITLES.get(row.kind, ("New notification", "Open the app to see it."))
    data = {"kind": row.kind, "notification_id": str(row.notification_id)}
    for name in ("capsule_id", "request_id", "reply_id", "thought_id"):
        value = getattr(row, name)
        if value is not None:
            data[name] = str(value)
    return Message(title=title, body=body, data=data, collapse_id=str(row.notification_id))


def backoff_seconds(attempts: int, *, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """After the `attempts`-th failed attempt: base * 2^(attempts-1), capped, with "equal jitter"
    (between half and all of it) so that pushes failed together do not come back together."""
    delay = min(cap, base * (2 ** max(0, attempts - 1)))
    return delay / 2 + rand() * delay / 2


class Sender:
    def __init__(
        self,
        db: Database,
        providers: Mapping[str, PushProvider],
        *,
        batch_size: int = 100,
        max_attempts: int = 8,
        interval_seconds: float = 1.0,
        lease_seconds: float = 60.0,
        backoff_base_seconds: float = 2.0,
        backoff_cap_seconds: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.providers = providers  # platform ("fcm", "apns") → provider
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.interval = interval_seconds
        self.lease = timedelta(seconds=lease_seconds)
        self.backoff_base = backoff_base_seconds
        self.backoff_cap = backoff_cap_seconds
        self.clock = clock

    async def run_once(self) -> int:
        """One batch: how many deliveries were claimed."""
        async with self.db.write() as conn:
            claimed = await storage.claim_due(conn, self.clock(), self.batch_size, self.lease)
        if not claimed:
            return 0
        outcomes = await asyncio.gather(*(self._send(row) for row in claimed))
        now = self.clock()
        async with self.db.write() as conn:
            for row, outcome in zip(claimed, outcomes, strict=True):
                await self._record(conn, row, outcome, now)
        return len(claimed)

    async def _send(self, row: Claimed) -> Outcome:
        provider = self.providers[row.platform]
        try:
            return await provider.send(Device(row.token, row.platform), message_of(row))
        except Exception as exc:  # an adapter's bug must not stall the queue: retried, then given up
            log.warning("push provider raised", extra={"fields": {"provider": provider.name, "error": repr(exc)}})
            return Outcome.retry(reason=type(exc).__name__)

    async def _record(self, conn: AsyncConnection, row: Claimed, outcome: Outcome, now: datetime) -> None:
        name = self.providers[row.platform].name
        if outcome.result is Result.DELIVERED:
            await storage.mark_delivered(conn, row.notification_id, row.token, now)
            SENT.labels(name).inc()
        elif outcome.result is Result.DEAD:
            await storage.delete_device(conn, row.token)
            DEAD.labels(name).inc()
            log.info("dead push token dropped", extra={"fields": {"provider": name, "reason": outcome.reason}})
        elif row.attempts >= self.max_attempts:
            await storage.give_up(conn, row.notification_id, row.token)
            FAILED.labels(name).inc()
            GIVEN_UP.labels(name).inc()
            log.warning("push given up", extra={"fields": {"provider": name, "reason": outcome.reason}})
        else:
            delay = outcome.retry_after_seconds
            if delay is None:
                delay = backoff_seconds(row.attempts, base=self.backoff_base, cap=self.backoff_cap)
            await storage.reschedule(
                conn,
                row.notification_id,
                row.token,
                now + timedelta(seconds=min(delay, self.backoff_cap)),
            )
            FAILED.labels(name).inc()

    async def run(self, stop: asyncio.Event) -> None:
        await sweep(
            stop,
            "push sender",
            self.run_once,
            interval=self.interval,
            batch_size=self.batch_size,
            fields={"providers": sorted(self.providers)},
        )
        for provider in {id(p): p for p in self.providers.values()}.values():
            with contextlib.suppress(Exception):
                await provider.aclose()
