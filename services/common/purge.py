"""Housekeeping: a bounded periodic purge of rows that no answer depends on any more (expired
idempotency keys in every service, the refresh tokens of sessions that ended in auth), so those
tables stop growing.

Each service runs one `Purger` as a lifecycle background job (`ServiceHost.add_background`). A
pass takes every table in turn and deletes its purgeable rows in batches, one short transaction
each, of the shape:

    DELETE FROM t WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM t WHERE <purgeable> LIMIT <batch> FOR UPDATE SKIP LOCKED))

- Bounded: a batch takes at most PURGE_BATCH_SIZE rows (locks held for one statement); the pass
  goes on while batches come back full, up to PURGE_MAX_ROWS_PER_RUN rows per table, then sleeps
  PURGE_INTERVAL_SECONDS (±10 %, so instances started together drift apart). A backlog is worked
  off over several passes instead of in one long burst.
- Safe on every instance at once: SKIP LOCKED gives concurrent passes disjoint rows, none waits
  for another, and none waits for a request that holds a row (e.g. a refresh locking its token).
- Indexed: each statement's scan is served by an index (tests/*/test_query_plans.py).
- Measured: `purged_rows_total{table}` counts the rows removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import TextClause, text

from services.common.db import Database
from services.common.settings import PurgeSettings
from services.common.telemetry import PURGED_ROWS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A table and the statements of one batch, run in turn: each binds `:limit` (rows it may
    remove) and `params`, and removes rows that no one else holds. Most tables need one
    (`rows_where`); a table whose rows must go in an order (auth's refresh tokens) has several."""

    table: str
    steps: tuple[TextClause, ...]
    params: Mapping[str, object] = field(default_factory=dict)


def rows_where(table: str, condition: str, params: Mapping[str, object] | None = None) -> Target:
    """Purge the rows of `table` that satisfy the SQL `condition`."""
    return Target(
        table,
        (
            text(
                f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
                f"SELECT ctid FROM {table} WHERE {condition} LIMIT :limit FOR UPDATE SKIP LOCKED))"
            ),
        ),
        params or {},
    )


class Purger:
    def __init__(self, db: Database, targets: Sequence[Target], settings: PurgeSettings) -> None:
        self.db = db
        self.targets = list(targets)
        self.batch_size = settings.batch_size
        self.max_rows_per_run = settings.max_rows_per_run
        self.interval = settings.interval_seconds

    async def purge(self, target: Target, stop: asyncio.Event | None = None) -> int:
        """Rounds of `target`'s steps while one of them comes back full, up to the per-run cap:
        rows removed."""
        counter = PURGED_ROWS.labels(target.table)
        removed = 0
        full = True
        while full and not (stop is not None and stop.is_set()):
            full = False
            for step in target.steps:
                limit = min(self.batch_size, self.max_rows_per_run - removed)
                if limit <= 0:
                    return removed
                async with self.db.write() as conn:
                    deleted = (await conn.execute(step, {**target.params, "limit": limit})).rowcount
                removed += deleted
                counter.inc(deleted)  # per batch: what a failed pass committed before it failed counts
                full = full or deleted >= limit
        return removed

    async def run_once(self, stop: asyncio.Event | None = None) -> dict[str, int]:
        """One pass over every target: rows removed per table."""
        removed: dict[str, int] = {}
        for target in self.targets:
            removed[target.table] = removed.get(target.table, 0) + await self.purge(target, stop)
        return removed

    async def run(self, stop: asyncio.Event) -> None:
        log.info("purge started", extra={"fields": {"tables": [t.table for t in self.targets]}})
        while not stop.is_set():
            try:
                removed = await self.run_once(stop)
            except Exception as exc:  # Postgres away: the next pass tries again
                log.warning("purge pass failed", extra={"fields": {"error": str(exc)}})
            else:
                if any(removed.values()):
                    log.info("purged", extra={"fields": {"rows": removed}})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval * random.uniform(0.9, 1.1)):
                    await stop.wait()
        log.info("purge stopped")
