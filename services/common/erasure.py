"""A service's share of the account-deletion saga (SPEC §14): erase what belongs to a deleted
account, then tell auth. The saga itself, and who erases what, is services/auth/deletion.py's doc.

Each participant (recipients, capsules, notifications) runs a consumer of auth's event stream in
a group named after itself (services/common/streams.py) whose `handle` is `Participant.handle`:

    account.deleted / account.deletion_settled  (user_id, requested_at)
      → erase(user, requested_at)      the service's own: batches of DELETE/UPDATE, each its own
                                       transaction, idempotent (a second run finds nothing left)
      → BEGIN; outbox ← account.erased {user_id, service, pass}; COMMIT
      → (the consumer acks)

- Killed part-way through the erasure (failpoint `erasure.partway`, which the services' erase
  functions reach after their first committed batch) or before reporting it
  (`erasure.erased`): the entry is still pending; delivered again, the erasure goes on from
  what is left, and the report is written then.
- Killed after reporting, before the ack (`erasure.reported`): delivered again, the erasure finds
  nothing, and the report's id is derived from (user, service, pass), so the outbox insert
  conflicts and nothing new is published (auth would ignore a second report anyway).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Row, TextClause

from services.common import events, outbox
from services.common.db import Database
from services.common.events import Event
from services.common.failpoints import failpoint
from services.common.foundation import Foundation
from services.common.streams import Entry, GroupConsumer

log = logging.getLogger(__name__)

PASSES = {events.ACCOUNT_DELETED: "first", events.ACCOUNT_DELETION_SETTLED: "final"}

ERASED = Counter(
    "account_erasures_total", "Passes of the account-deletion saga this service finished", ["service", "pass"]
)
ERASED_ROWS = Counter("account_erased_rows_total", "Rows deleted or unlinked by account erasures", ["service", "table"])
MALFORMED = Counter(
    "account_erasure_events_malformed_total", "Entries of auth's stream that were not events (skipped)", ["service"]
)

# erase(user, requested_at) → rows changed per table. `requested_at` is when the deletion was
# asked: what was sealed then goes, what was already delivered stays (the same answer on every
# pass, whatever the time it runs).
Erase = Callable[[uuid.UUID, datetime], Awaitable[Mapping[str, int]]]


class Participant:
    def __init__(self, db: Database, *, service: str, erase: Erase) -> None:
        self.db = db
        self.service = service
        self.erase = erase

    async def handle(self, entries: Sequence[Entry]) -> None:
        for entry_id, fields in entries:
            try:
                event = Event.from_fields(fields)
                pass_ = PASSES.get(event.type)
                if pass_ is None:
                    continue  # auth's other events concern others
                user = uuid.UUID(str(event.data["user_id"]))
                requested_at = datetime.fromisoformat(str(event.data["requested_at"]))
            except (KeyError, ValueError, TypeError) as exc:
                MALFORMED.labels(self.service).inc()
                log.warning(
                    "malformed entry skipped",
                    extra={"fields": {"entry": entry_id, "error": type(exc).__name__}},
                )
                continue
            await self.run(user, requested_at, pass_)

    async def run(self, user: uuid.UUID, requested_at: datetime, pass_: str) -> None:
        """One pass for one account: erase, then report (both idempotent)."""
        changed = await self.erase(user, requested_at)
        failpoint("erasure.erased")  # erased, not reported: the redelivery reports it
        report = outbox.event(
            events.ACCOUNT_ERASED,
            {"user_id": str(user), "service": self.service, "pass": pass_},
            id=outbox.derived_id(events.ACCOUNT_ERASED, user, self.service, pass_),
        )
        async with self.db.write() as conn:
            first_report = await outbox.add(conn, report)
        failpoint("erasure.reported")  # reported, not acked: the redelivery reports nothing new
        for table, count in changed.items():
            if count:
                ERASED_ROWS.labels(self.service, table).inc(count)
        if first_report:
            ERASED.labels(self.service, pass_).inc()
        log.info(
            "account erased",
            extra={"fields": {"pass": pass_, "rows": sum(changed.values()), "again": not first_report}},
        )


# Rows per erasure transaction: short transactions, so that the erasure of a prolific account never
# holds many locks against the people using the service meanwhile.
BATCH_SIZE = 500

AfterBatch = Callable[[Sequence[Row[Any]]], Awaitable[None]]


async def batched(
    db: Database,
    statement: TextClause,
    params: Mapping[str, Any],
    *,
    batch_size: int = BATCH_SIZE,
    after: AfterBatch | None = None,
) -> int:
    """Runs `statement` (a DELETE or UPDATE of at most :batch rows, with RETURNING) in its own
    transaction again and again until a batch comes back short; `after` gets each batch's rows
    once it is committed (the caches to correct). How many rows it changed in all."""
    total = 0
    while True:
        async with db.write() as conn:
            rows = (await conn.execute(statement, {**params, "batch": batch_size})).all()
        total += len(rows)
        if rows:
            if after is not None:
                await after(rows)
            # A batch committed, the rest not done: the redelivered event goes on from here.
            failpoint("erasure.partway")
        if len(rows) < batch_size:
            return total


def take_part(base: Foundation, erase: Erase) -> None:
    """The service joins the saga: a consumer of auth's stream in the group named after the service
    (when the instance runs consumers at all, STREAM_CONSUMERS_ENABLED)."""
    common = base.host.settings
    if not common.consumers.enabled:
        return
    participant = Participant(base.db, service=common.name, erase=erase)
    auth_stream = events.events_stream(common.mesh_prefix, "auth")
    consumer = GroupConsumer.of(
        base.streams, common.consumers, stream=auth_stream, group=common.name, handle=participant.handle
    )
    base.host.add_background("account-erasure", consumer.run)
