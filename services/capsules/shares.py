"""Countdown shares (SPEC §13): the recipient of a sealed capsule makes public links that show the
countdown to its unlock time, its theme and, unless it is anonymous, the sender's display name —
never its title or body. Plain async code, no gRPC types.

Decisions:
- Who: only the capsule's recipient makes and revokes shares (the sender and anyone else get
  NOT_FOUND, as for a capsule they may not see); anyone holding a token reads it, signed in or not.
- When: shares are made while the capsule is sealed (FAILED_PRECONDITION CAPSULE_NOT_SEALED after,
  at the service's clock, checked under the capsule's row lock so an edit of unlocks_at cannot slip
  between). At most MAX_LIVE_SHARES live shares per capsule (FAILED_PRECONDITION
  SHARE_LIMIT_REACHED), counted under the same lock: the table cannot grow without bound.
- Blocks: as for replies (replies.py), a share is something new made out of the pair's capsule, and
  it puts the sender's name in public: it needs the pair connected and not blocked, refused like a
  send (FAILED_PRECONDITION NOT_CONNECTED) so a block is never told apart from a removed connection.
  Shares already made are not touched by a later block (like the capsule itself); the recipient
  revokes them.
- After the unlock time a share keeps answering: the same unlock time, with state UNLOCKED (ready
  and opened look the same: a share does not tell whether the recipient opened it). It never shows
  the body, the title or any id. A capsule the sender deleted makes its shares answer NOT_FOUND.
- The sender's display name is the one the recipient saw when making the share (kept on the row):
  the public read has no caller on whose behalf auth could be asked. NULL for an anonymous capsule,
  which a share never reveals, even after the sender is revealed to the recipient.
- Tokens: secrets.token_urlsafe(32), 43 characters (256 random bits), stored as issued, with a
  unique index. Not hashed: a token only ever shows what it is meant to show publicly (a countdown,
  a theme, a name), it cannot act on anything, and keeping it lets an Idempotency-Key retry answer
  the same token. A token of the wrong shape is NOT_FOUND without a query.
- Revoke deletes the row: its token answers NOT_FOUND from then on, and so does a second revoke.
  Shared caches may keep a public answer for its max-age (a minute, shares.proto), which bounds how
  long a revoked link can still be seen through a CDN; the gateway itself keeps nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from services.capsules import public_tokens, storage
from services.capsules import replies_shares_storage as sql
from services.capsules.neighbours import Neighbours
from services.capsules.replies_shares_storage import ShareRow
from services.capsules.storage import ThemeRow
from services.common import idempotency, validation
from services.common.db import Database
from services.common.errors import FailedPrecondition, FieldErrors, NotFound
from services.common.ids import new_id
from services.common.people import Directory
from services.common.tokens import Caller

CREATE_OPERATION = "share-create"
KINDS = ("story", "video", "static", "link")
MAX_LIVE_SHARES = 20


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class SharedCountdown:
    """What a share shows to anyone holding its token, at one instant."""

    kind: str
    unlocks_at: datetime
    unlocked: bool
    theme: ThemeRow | None
    sender_display_name: str
    anonymous: bool


class Shares:
    def __init__(
        self,
        *,
        db: Database,
        neighbours: Neighbours,
        directory: Directory,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.db = db
        self.neighbours = neighbours
        self.directory = directory
        self.clock = clock

    async def create(self, caller: Caller, capsule_id: str, *, kind: str, idempotency_key: str | None) -> ShareRow:
        cid = validation.resource_id(capsule_id, "capsule_id")
        errors = FieldErrors()
        if kind not in KINDS:
            errors.add("kind", "must be one of " + ", ".join(KINDS))
        idempotency.check_key(errors, idempotency_key)
        errors.raise_if_any()

        request_hash = hashlib.sha256(orjson.dumps([str(cid), kind])).digest()
        claim = {"operation": CREATE_OPERATION, "caller": str(caller.user_id), "key": idempotency_key or ""}
        if idempotency_key:
            async with self.db.read() as conn:
                earlier = await storage.idempotent_result(conn, **claim)
            if earlier is not None:
                return await self._replay(earlier, request_hash)

        # Refusals that need no other service first; all of them are checked again below.
        async with self.db.read() as conn:
            capsule = _shareable(await storage.capsule(conn, cid), caller, self.clock())
        relationship = await self.neighbours.relationship(caller, capsule.sender)
        if not relationship.connected or relationship.blocked:
            raise FailedPrecondition(
                "you can only share capsules from your connections",
                reason="NOT_CONNECTED",
                violations=[("capsule_id", "its sender is not one of your connections")],
            )
        sender_name = None
        if not capsule.anonymous:
            profile = (await self.directory.profiles(caller, [capsule.sender])).get(capsule.sender)
            sender_name = profile.display_name if profile is not None else None

        async with self.db.write(touching=(caller.user_id,)) as conn:
            prior = None
            if idempotency_key:
                prior = await idempotency.claim(conn, **claim, request_hash=request_hash)
            if prior is None:
                # The lock orders this against an edit of unlocks_at, a delete and other shares.
                _shareable(await storage.capsule(conn, cid, for_update=True), caller, self.clock())
                if await sql.live_shares(conn, cid) >= MAX_LIVE_SHARES:
                    raise FailedPrecondition(
                        f"a capsule can have at most {MAX_LIVE_SHARES} shares: revoke one first",
                        reason="SHARE_LIMIT_REACHED",
                    )
                row = await sql.insert_share(
                    conn,
                    id=new_id(),
                    capsule_id=cid,
                    token=public_tokens.new_token(),
                    kind=kind,
                    sender_name=sender_name,
                    created_by=caller.user_id,
                )
                if idempotency_key:
                    await idempotency.record_result(conn, **claim, result_id=row.id)
        if prior is not None:
            return await self._replay(prior, request_hash)
        return row

    async def _replay(self, prior: idempotency.PriorRequest, request_hash: bytes) -> ShareRow:
        if prior.request_hash != request_hash or prior.result_id is None:
            raise idempotency.key_reused("share")
        async with self.db.read() as conn:
            first = await sql.share_by_id(conn, prior.result_id)
        if first is None:
            raise NotFound("the share this Idempotency-Key created was revoked")
        return first

    async def get(self, token: str) -> SharedCountdown:
        """Public: no caller."""
        if not public_tokens.well_formed(token):
            raise _unknown_share()
        async with self.db.read() as conn:
            row = await sql.shared(conn, token)
        if row is None:
            raise _unknown_share()
        return SharedCountdown(
            kind=row.kind,
            unlocks_at=row.unlocks_at,
            unlocked=self.clock() >= row.unlocks_at,
            theme=row.theme,
            sender_display_name="" if row.anonymous else (row.sender_name or ""),
            anonymous=row.anonymous,
        )

    async def revoke(self, caller: Caller, capsule_id: str, token: str) -> None:
        cid = validation.resource_id(capsule_id, "capsule_id")
        if not public_tokens.well_formed(token):
            raise _unknown_share()
        async with self.db.write(touching=(caller.user_id,)) as conn:
            revoked = await sql.revoke_share(conn, capsule_id=cid, token=token, caller=caller.user_id)
        if not revoked:
            raise _unknown_share()


def _shareable(capsule: storage.CapsuleRow | None, caller: Caller, now: datetime) -> storage.CapsuleRow:
    if capsule is None or capsule.recipient_user != caller.user_id:
        raise NotFound("no capsule with this id")
    if now >= capsule.unlocks_at:
        raise FailedPrecondition("a capsule can be shared only while it is sealed", reason="CAPSULE_NOT_SEALED")
    return capsule


def _unknown_share() -> NotFound:
    return NotFound("no share with this token")
