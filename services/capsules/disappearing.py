"""Disappearing letters (SPEC §13): a capsule sent with `disappear_after_open_seconds` (60..86,400)
loses its body for good that long after the recipient first opens it; the row stays and says
`disappeared`. Plain async code, no gRPC types.

When the clock starts: the first open. Opening locks the row and sets opened_at once (UPDATE …
WHERE opened_at IS NULL), and the same statement sets disappears_at = opened_at + N, so concurrent
opens agree on one start (storage.mark_opened).

Two guards, so the body is never shown after its time whatever the eraser's lag:
- Every read decides from the clock (`gone`, used by capsules.view for every caller, the sender
  included): past disappears_at the body is not shown, whether it came from Postgres, a replica, the
  Redis copy of the row or a page kept in process memory — those keep rows, never answers.
- The eraser (`Eraser`, a background job on every serving instance) sets the body to NULL in the
  database in batches, oldest due first:

      BEGIN
      UPDATE capsules SET body = NULL, disappeared_at = now
       WHERE id IN (SELECT id FROM capsules WHERE disappears_at <= now AND disappeared_at IS NULL
                     ORDER BY disappears_at LIMIT batch FOR UPDATE SKIP LOCKED)  (capsules_disappear_idx)
       RETURNING the rows
      COMMIT
      then overwrite the cached rows and drop the owners' kept pages (Capsules.forget_bodies)

  SKIP LOCKED: several erasers take disjoint batches and none waits for another, nor for an open
  or a read holding a row. A row is erased once (disappeared_at IS NULL in the scan). If the
  invalidation after the commit fails (Redis away), the cached copies still hold the body until
  their minute is over, and the clock check above keeps it from being shown meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from prometheus_client import Counter

from services.capsules import storage
from services.capsules.storage import CapsuleRow
from services.common.background import sweep
from services.common.db import Database
from services.common.errors import FieldErrors

log = logging.getLogger(__name__)

FIELD = "disappear_after_open_seconds"
# SPEC §13's bounds. The minimum is a setting only so that the test stack can lower it
# (CAPSULE_MIN_DISAPPEAR_SECONDS, see settings.py); production keeps 60.
MIN_SECONDS = 60
MAX_SECONDS = 24 * 3600

ERASED = Counter("capsule_bodies_erased_total", "Bodies of disappearing capsules erased by the eraser")


def after_open_seconds(
    errors: FieldErrors, value: int | None, minimum: int = MIN_SECONDS, field: str = FIELD
) -> int | None:
    """None: the letter never disappears. Otherwise minimum..86,400 seconds (the maximum is
    declared in capsules.proto; the minimum is a setting)."""
    if value is None:
        return None
    if not minimum <= value <= MAX_SECONDS:
        errors.add(field, f"must be {minimum} to {MAX_SECONDS} seconds (24 hours)")
    return value


def gone(row: CapsuleRow, now: datetime) -> bool:
    """Whether the body has disappeared at `now`: its time has come, or the eraser already took it
    (a row erased by an instance whose clock runs a little ahead of this one's)."""
    if row.disappeared_at is not None or row.body is None:
        return True
    return row.disappears_at is not None and row.disappears_at <= now


class Eraser:
    """The background sweep that erases due bodies (see the module's docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        forget: Callable[[Sequence[CapsuleRow]], Awaitable[None]],
        batch_size: int = 100,
        interval_seconds: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.forget = forget  # drops the cached copies of erased rows (Capsules.forget_bodies)
        self.batch_size = batch_size
        self.interval = interval_seconds
        self.clock = clock

    async def run_once(self) -> int:
        """One batch: how many bodies were erased."""
        now = self.clock()
        async with self.db.write() as conn:
            erased = await storage.erase_due_bodies(conn, now, self.batch_size)
        if erased:
            ERASED.inc(len(erased))
            await self.forget(erased)
        return len(erased)

    async def run(self, stop: asyncio.Event) -> None:
        await sweep(stop, "eraser", self.run_once, interval=self.interval, batch_size=self.batch_size)
