"""Self letters (SPEC §13): a letter to one's future self, sealed until opens_at, opened, then
answered once. Plain async code, no gRPC types.

Decisions (the SPEC leaves them to us):
- Fields: body 20 to 500 characters, kept as written (line breaks are the letter's) but with at
  least 20 that are not white space; title ≤ 200, mood ≤ 32 (a word or an emoji: free text, the
  replaced app had no fixed list), city ≤ 100, all three optional and trimmed; life_area required,
  one of self|work|family|money|health; opens_at required, at least the capsules' minimum lead
  ahead (SPEC §6: 1 minute; the test stack lowers it) and at most 50 years ahead, the bounds of
  a capsule's unlocks_at. Every violation is reported at once; nothing is written on any refusal.
- Who sees what: the author only. Anyone else gets NOT_FOUND, exactly as for an id that does not
  exist, so existence never leaks. No relationship (connection, block) is involved: nobody else is.
- Status, derived from the service's clock at read time like a capsule's: sealed before opens_at,
  ready from then, opened once opened_at is set. The body is withheld while sealed, in lists,
  reads and the create's own answer alike; it is shown from opens_at on, opened or not (opening
  only records the moment).
- Open: before opens_at FAILED_PRECONDITION SELF_LETTER_SEALED (the opens_at in the error's
  metadata), as a capsule answers; after, opened_at is set once and a second open returns the
  same letter with nothing written.
- Reflect: only once opened (FAILED_PRECONDITION SELF_LETTER_NOT_OPENED: it may become possible);
  a second answer is ALREADY_EXISTS SELF_LETTER_ALREADY_REFLECTED (409): the answer is a one-time
  thing that now exists and no retry will change that. Even the same answer again is refused, so
  a client learns the first one stands (the error's metadata carries it). Open and reflect lock the
  row, so two reflects at once are serialised and exactly one is stored; the table's checks are
  the backstop (no reflection without an opening).
- Immutable: no update or delete RPC exists.
- List: newest first, by id (UUIDv7, time-ordered), keyset on the id alone: the author's journal
  as written. Read from the primary (the author just wrote it; nothing is cached).
- Create is retry-safe under an idempotency key, like a capsule's: the same key and fields return
  the first letter; the same key with other fields is ABORTED IDEMPOTENCY_KEY_REUSED (409).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from services.capsules import rules
from services.capsules import self_letters_storage as storage
from services.capsules.self_letters_storage import SelfLetterRow
from services.capsules.storage import idempotent_result
from services.common import idempotency, validation
from services.common.db import Database
from services.common.errors import AlreadyExists, FailedPrecondition, FieldErrors, NotFound
from services.common.ids import new_id
from services.common.pagination import Page, page_after, page_size, take_page
from services.common.tokens import Caller

CREATE_OPERATION = "self-letter-create"
LIST_NAME = "self-letters"

LIFE_AREAS = ("self", "work", "family", "money", "health")
ANSWERS = ("yes", "no", "skipped")


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- what the author sees --------------------------------------------------------------------------


def status_at(row: SelfLetterRow, now: datetime) -> str:
    if now < row.opens_at:
        return "sealed"
    return "opened" if row.opened_at is not None else "ready"


@dataclass(frozen=True, slots=True)
class SelfLetterView:
    """A self letter as its author sees it at one instant: the body only once opens_at passed."""

    row: SelfLetterRow
    status: str

    @property
    def body_visible(self) -> bool:
        return self.status != "sealed"


def view(row: SelfLetterRow, now: datetime) -> SelfLetterView:
    return SelfLetterView(row, status_at(row, now))


class SelfLetters:
    def __init__(self, *, db: Database, min_lead_seconds: int = 60, clock: Callable[[], datetime] = utc_now) -> None:
        self.db = db
        self.min_lead = min_lead_seconds
        self.clock = clock

    async def create(
        self,
        caller: Caller,
        *,
        title: str,
        body: str,
        mood: str,
        life_area: str | None,
        city: str,
        opens_at: datetime | None,
        idempotency_key: str | None,
    ) -> SelfLetterView:
        now = self.clock()
        errors = FieldErrors()
        # Lengths and the life area were judged by CreateSelfLetterRequest's declared rules.
        area = life_area
        assert area in LIFE_AREAS  # required and one of the enum's: judged before the handler
        opens = rules.unlocks_at(errors, opens_at, now, self.min_lead, "opens_at")
        idempotency.check_key(errors, idempotency_key)
        errors.raise_if_any()
        assert opens is not None

        request_hash = hashlib.sha256(orjson.dumps([title, body, mood, area, city, opens.isoformat()])).digest()
        claim = {"operation": CREATE_OPERATION, "caller": str(caller.user_id), "key": idempotency_key or ""}
        if idempotency_key:
            # A retry of a create that committed is answered without taking the write path.
            async with self.db.read() as conn:
                earlier = await idempotent_result(conn, **claim)
            if earlier is not None:
                return await self._replay(caller, earlier, request_hash)

        async with self.db.write(touching=(caller.user_id,)) as conn:
            # The claim decides between concurrent first calls with one key: the second waits on
            # the key's primary key until the first commits, then replays its letter.
            prior = await idempotency.claim(conn, **claim, request_hash=request_hash) if idempotency_key else None
            if prior is None:
                row = await storage.insert(
                    conn,
                    id=new_id(),
                    author=caller.user_id,
                    title=title,
                    body=body,
                    mood=mood,
                    life_area=area,
                    city=city,
                    opens_at=opens,
                )
                if idempotency_key:
                    await idempotency.record_result(conn, **claim, result_id=row.id)
        if prior is not None:
            return await self._replay(caller, prior, request_hash)
        return view(row, self.clock())

    async def _replay(self, caller: Caller, prior: idempotency.PriorRequest, request_hash: bytes) -> SelfLetterView:
        if prior.request_hash != request_hash or prior.result_id is None:
            raise idempotency.key_reused("self letter")
        async with self.db.read() as conn:
            first = await storage.letter(conn, prior.result_id)
        if first is None or first.author != caller.user_id:
            raise _not_found()
        return view(first, self.clock())

    async def get(self, caller: Caller, letter_id: str) -> SelfLetterView:
        lid = validation.resource_id(letter_id)
        async with self.db.read() as conn:
            row = await storage.letter(conn, lid)
        if row is None or row.author != caller.user_id:
            raise _not_found()
        return view(row, self.clock())

    async def list(self, caller: Caller, *, requested_size: int, token: str) -> Page[SelfLetterView]:
        size = page_size(requested_size)
        after = page_after(token, LIST_NAME, uuid.UUID, caller=caller.user_id)
        async with self.db.read() as conn:
            read = await storage.list_letters(conn, caller.user_id, before=after[0] if after else None, limit=size + 1)
        rows, next_token = take_page(read, size, LIST_NAME, lambda r: [r.id], caller=caller.user_id)
        now = self.clock()
        return Page([view(r, now) for r in rows], next_token)

    async def open(self, caller: Caller, letter_id: str) -> SelfLetterView:
        lid = validation.resource_id(letter_id)
        now = self.clock()
        async with self.db.write(touching=(caller.user_id,)) as conn:
            row = await storage.letter(conn, lid, for_update=True)
            if row is None or row.author != caller.user_id:
                raise _not_found()
            if now < row.opens_at:
                raise FailedPrecondition(
                    "this self letter is still sealed",
                    reason="SELF_LETTER_SEALED",
                    metadata={"opens_at": row.opens_at.isoformat()},
                )
            if row.opened_at is None:
                row = await storage.mark_opened(conn, lid, now)
        return view(row, now)

    async def reflect(self, caller: Caller, letter_id: str, answer: str | None) -> SelfLetterView:
        lid = validation.resource_id(letter_id)
        assert answer in ANSWERS  # required and one of the enum's: judged before the handler
        now = self.clock()
        async with self.db.write(touching=(caller.user_id,)) as conn:
            row = await storage.letter(conn, lid, for_update=True)
            if row is None or row.author != caller.user_id:
                raise _not_found()
            if row.opened_at is None:
                raise FailedPrecondition("open the self letter before answering it", reason="SELF_LETTER_NOT_OPENED")
            if row.reflection is not None:
                raise AlreadyExists(
                    "this self letter already has its answer",
                    reason="SELF_LETTER_ALREADY_REFLECTED",
                    metadata={"answer": row.reflection},
                )
            row = await storage.reflect(conn, lid, answer, now)
        return view(row, now)


def _not_found() -> NotFound:
    return NotFound("no self letter with this id")
