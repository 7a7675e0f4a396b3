"""Replies (SPEC §13): the recipient of an opened capsule answers it once with one of seven emoji
and up to 60 characters; the capsule's sender and recipient read the reply. Plain async code, no
gRPC types.

Decisions:
- Who: only the capsule's recipient (the user recorded on it at send time) replies; the sender and
  the recipient read; anyone else, like everyone for a capsule that does not exist, NOT_FOUND. A
  capsule without a reply answers the same NOT_FOUND to its two parties.
- When: only once the capsule is opened (FAILED_PRECONDITION CAPSULE_NOT_OPENED before, sealed or
  ready alike). An opened capsule can no longer change (edit and delete need it sealed), so the
  transaction reads it without a lock.
- Once: the unique constraint on capsule_id decides, also between concurrent replies (the loser's
  INSERT … ON CONFLICT DO NOTHING waits for the winner's commit and writes nothing): ALREADY_EXISTS
  REPLY_EXISTS (409). With an Idempotency-Key, a retry with the same key and fields answers the
  first reply instead.
- Blocks: capsules keep an existing capsule readable by both sides whatever happens to the pair (no
  relationship check on get/open), and so do replies on read. Writing a reply, though, is sending
  something to the sender, which SPEC §5 forbids across a block: it needs what sending needs — the
  pair connected and not blocked (asked of the recipients service) — and is refused exactly like a
  send, FAILED_PRECONDITION NOT_CONNECTED, so a block by the sender is never told apart from a
  removed connection. (That check is a call to another service, made before the transaction, as
  capsule creation does: a block landing between the two is not seen.)
- Emoji: compared as code points after NFC and with the emoji variation selectors (U+FE0E, U+FE0F)
  removed, so "❤" and "❤️" are the same heart; stored in one canonical spelling (the list declared
  in replies.proto, judged before the handler). Skin tones and other sequences are not among the
  seven.
- Text: optional, trimmed, NFC-normalised, at most 60 code points (what Python's len and Postgres's
  char_length count), no control characters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

from services.capsules import replies_shares_storage as sql
from services.capsules import storage
from services.capsules.neighbours import Neighbours
from services.capsules.replies_shares_storage import ReplyRow
from services.common import events, idempotency, outbox, validation
from services.common.db import Database
from services.common.errors import AlreadyExists, FailedPrecondition, FieldErrors, NotFound
from services.common.ids import new_id
from services.common.tokens import Caller

CREATE_OPERATION = "reply-create"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Replies:
    def __init__(self, *, db: Database, neighbours: Neighbours, clock: Callable[[], datetime] = utc_now) -> None:
        self.db = db
        self.neighbours = neighbours
        self.clock = clock

    async def create(
        self, caller: Caller, capsule_id: str, *, text: str, emoji_value: str, idempotency_key: str | None
    ) -> ReplyRow:
        cid = validation.resource_id(capsule_id, "capsule_id")
        errors = FieldErrors()
        # NFC, at most 60 characters; one of the seven emoji, in its canonical spelling: judged
        # and normalized by CreateReplyRequest's declared rules.
        words, chosen = text, emoji_value
        idempotency.check_key(errors, idempotency_key)
        errors.raise_if_any()

        request_hash = hashlib.sha256(orjson.dumps([str(cid), words, chosen])).digest()
        claim = {"operation": CREATE_OPERATION, "caller": str(caller.user_id), "key": idempotency_key or ""}
        if idempotency_key:
            async with self.db.read() as conn:
                earlier = await storage.idempotent_result(conn, **claim)
            if earlier is not None:
                return await self._replay(earlier, request_hash)

        # Refusals that need no other service first; all of them are checked again below.
        async with self.db.read() as conn:
            capsule = await storage.capsule(conn, cid)
        sender = _repliable(capsule, caller).sender
        relationship = await self.neighbours.relationship(caller, sender)
        if not relationship.connected or relationship.blocked:
            raise FailedPrecondition(
                "you can only reply to your connections",
                reason="NOT_CONNECTED",
                violations=[("capsule_id", "its sender is not one of your connections")],
            )

        async with self.db.write(touching=(caller.user_id, sender)) as conn:
            prior = None
            if idempotency_key:
                prior = await idempotency.claim(conn, **claim, request_hash=request_hash)
            if prior is None:
                _repliable(await storage.capsule(conn, cid), caller)
                inserted = await sql.insert_reply(
                    conn, id=new_id(), capsule_id=cid, author=caller.user_id, text=words, emoji=chosen
                )
                if inserted is None:
                    raise _already_replied()
                data = {
                    "reply_id": str(inserted.id),
                    "capsule_id": str(cid),
                    "author": str(caller.user_id),
                    "capsule_sender": str(sender),
                }
                await outbox.add(conn, outbox.event(events.REPLY_RECEIVED, data))
                if idempotency_key:
                    await idempotency.record_result(conn, **claim, result_id=inserted.id)
        if prior is not None:
            return await self._replay(prior, request_hash)
        assert inserted is not None  # (mypy: a refused insert raised inside the transaction)
        return inserted

    async def _replay(self, prior: idempotency.PriorRequest, request_hash: bytes) -> ReplyRow:
        if prior.request_hash != request_hash or prior.result_id is None:
            raise idempotency.key_reused("reply")
        async with self.db.read() as conn:
            first = await sql.reply_by_id(conn, prior.result_id)
        if first is None:
            raise NotFound("the reply this Idempotency-Key created no longer exists")
        return first

    async def get(self, caller: Caller, capsule_id: str) -> ReplyRow:
        cid = validation.resource_id(capsule_id, "capsule_id")
        async with self.db.read() as conn:
            found = await sql.reply_of_capsule(conn, cid)
        if found is None or caller.user_id not in (found.sender, found.recipient_user):
            raise NotFound("no reply to this capsule")
        return found.reply


def _repliable(capsule: storage.CapsuleRow | None, caller: Caller) -> storage.CapsuleRow:
    if capsule is None or capsule.recipient_user != caller.user_id:
        raise NotFound("no capsule with this id")
    if capsule.opened_at is None:
        raise FailedPrecondition("a capsule can be replied to once it is opened", reason="CAPSULE_NOT_OPENED")
    return capsule


def _already_replied() -> AlreadyExists:
    return AlreadyExists("this capsule already has a reply", reason="REPLY_EXISTS")
