"""Thoughts (SPEC §13): a content-free "thinking of you" between two connected users, as plain
async code.

Rules, all checked inside the transaction that writes the thought:
- only to a connection with no block either way; anyone else (a stranger, a blocked user, an
  unknown id) is NOT_FOUND with the same words, so nothing tells whether the user exists;
- one per pair per UTC day (ALREADY_EXISTS) and at most DAILY_LIMIT per sender per UTC day
  (RESOURCE_EXHAUSTED, retry at the next UTC midnight).

Concurrency: an advisory lock per sender (storage.lock_thought_sender) serialises one sender's
count-then-insert, so parallel sends cannot overrun the limit, while other senders never wait;
the pair lock (shared with connect/remove/block) keeps a block or a disconnection from slipping
between the check and the insert. The unique key (sender, utc_day, receiver) is the backstop of
the per-pair rule.

The day is the UTC calendar day of the service's clock (injectable, `utc_day` and
`next_utc_midnight` are pure), and the row stores both the time and its day.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import orjson
import sqlalchemy.exc

from services.common import events, idempotency, outbox, validation
from services.common.db import Database, violated_constraint
from services.common.errors import AlreadyExists, FieldErrors, InvalidArgument, NotFound, ResourceExhausted
from services.common.ids import new_id
from services.common.pagination import Page, page_after, page_size, take_page
from services.common.people import Directory, Profile
from services.common.tokens import Caller
from services.recipients import storage
from services.recipients.relationships import UNKNOWN_USER
from services.recipients.storage import ThoughtRow

DAILY_LIMIT = 20
DIRECTIONS = ("incoming", "outgoing")
PAIR_KEY = "thoughts_sender_day_receiver_key"

Clock = Callable[[], datetime]


def utc_day(at: datetime) -> date:
    """The UTC calendar day of an aware time (whatever its zone)."""
    if at.tzinfo is None:
        raise ValueError("a time without a zone has no UTC day")
    return at.astimezone(UTC).date()


def next_utc_midnight(at: datetime) -> datetime:
    """When the UTC day of `at` ends: the daily limits start over then."""
    return datetime.combine(utc_day(at) + timedelta(days=1), time(0), tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ThoughtWithProfile:
    thought: ThoughtRow
    profile: Profile | None


class Thoughts:
    def __init__(self, *, db: Database, directory: Directory, clock: Clock = lambda: datetime.now(UTC)) -> None:
        self.db = db
        self.directory = directory
        self.clock = clock

    async def send(self, caller: Caller, to_user_id: str, idempotency_key: str | None) -> ThoughtRow:
        to_user = validation.resource_id(to_user_id, "to_user_id")
        errors = FieldErrors()
        idempotency.check_key(errors, idempotency_key)
        errors.raise_if_any()
        me = caller.user_id
        if to_user == me:
            raise InvalidArgument(
                "you cannot send a thought to yourself",
                reason="SELF_THOUGHT",
                violations=[("to_user_id", "must be another user")],
            )
        request_hash = hashlib.sha256(orjson.dumps(["thought", str(to_user)])).digest()
        claim = {"operation": "thought", "caller": str(me), "key": idempotency_key or ""}
        try:
            async with self.db.write(touching=(me, to_user)) as conn:
                prior = None
                if idempotency_key:
                    prior = await idempotency.claim(conn, **claim, request_hash=request_hash)
                if prior is None:
                    # Same order as connection requests (sender, then pair): no lock cycles.
                    await storage.lock_thought_sender(conn, me)
                    await storage.lock_pair(conn, me, to_user)
                    # The day is read after the locks: a send that waited across midnight counts
                    # in the day it is written on.
                    now = self.clock()
                    day = utc_day(now)
                    if not await storage.connected(conn, me, to_user) or await storage.blocked_either_way(
                        conn, me, to_user
                    ):
                        raise _unknown_user()
                    if await storage.thought_sent_to_on(conn, me, to_user, day):
                        raise _already_sent()
                    if await storage.thoughts_sent_on(conn, me, day) >= DAILY_LIMIT:
                        reset = next_utc_midnight(now)
                        raise ResourceExhausted(
                            f"at most {DAILY_LIMIT} thoughts per UTC day; try again after {reset.isoformat()}",
                            reason="THOUGHT_LIMIT_REACHED",
                            metadata={"retry_at": reset.isoformat()},
                            retry_after_seconds=(reset - now).total_seconds(),
                        )
                    row = await storage.insert_thought(conn, id=new_id(), sender=me, receiver=to_user, day=day, at=now)
                    data = {"thought_id": str(row.id), "sender": str(me), "receiver": str(to_user)}
                    await outbox.add(conn, outbox.event(events.THOUGHT_RECEIVED, data))
                    if idempotency_key:
                        await idempotency.record_result(conn, **claim, result_id=row.id)
        except sqlalchemy.exc.IntegrityError as exc:
            # Unreachable while the sender lock is held; kept so the unique key answers 409, not 500.
            if violated_constraint(exc) == PAIR_KEY:
                raise _already_sent() from None
            raise
        if prior is not None:
            return await self._replay(caller, prior, request_hash)
        return row

    async def _replay(self, caller: Caller, prior: idempotency.PriorRequest, request_hash: bytes) -> ThoughtRow:
        if prior.request_hash != request_hash or prior.result_id is None:
            raise idempotency.key_reused("thought")
        async with self.db.read() as conn:
            row = await storage.sent_thought(conn, caller.user_id, prior.result_id)
        if row is None:
            raise NotFound("this thought no longer exists")
        return row

    async def list(self, caller: Caller, direction: str, requested_size: int, token: str) -> Page[ThoughtWithProfile]:
        if direction not in DIRECTIONS:
            raise InvalidArgument(
                "direction must be incoming or outgoing", violations=[("direction", "must be incoming or outgoing")]
            )
        size = page_size(requested_size)
        incoming = direction == "incoming"
        name = f"thoughts:{direction}"
        (after,) = page_after(token, name, uuid.UUID, caller=caller.user_id) or (None,)
        rows = await self.db.read_may_lag(
            lambda conn: storage.list_thoughts(conn, caller.user_id, incoming=incoming, after=after, limit=size + 1),
            users=(caller.user_id,),
        )
        page, next_token = take_page(rows, size, name, _by_id, caller=caller.user_id)
        # Like the connections list: the other users' profiles in one batched call per page.
        profiles = await self.directory.profiles(caller, list(dict.fromkeys(r.other for r in page)))
        return Page([ThoughtWithProfile(r, profiles.get(r.other)) for r in page], next_token)


def _by_id(row: ThoughtRow) -> list[uuid.UUID]:
    return [row.id]


def _unknown_user() -> NotFound:
    # The words of an unknown user (relationships.UNKNOWN_USER): a stranger or a block is not told.
    return NotFound(UNKNOWN_USER, violations=[("to_user_id", UNKNOWN_USER)])


def _already_sent() -> AlreadyExists:
    return AlreadyExists(
        "you already sent this user a thought today (UTC); one per day",
        reason="THOUGHT_ALREADY_SENT",
        violations=[("to_user_id", "already has a thought from you today")],
    )
