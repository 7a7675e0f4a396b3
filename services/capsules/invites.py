"""Invites (SPEC §13): letters to people not on the app yet. Plain async code, no gRPC types.

A capsule may go to a recipient linked to no one (capsules.py): it is in no inbox and its
`recipient_user` is NULL. Its sender asks for its invite (one per capsule, the same on every ask)
and hands its link to the person; anyone holding the token sees the unlock time, the theme and the
title, never the sender or the body. The first signed-in person to claim it becomes the capsule's
recipient: linked to the sender's address-book entry, connected to the sender, with a recipient of
their own linked to the sender — what accepting a connection request does — and the capsule in
their inbox.

The claim spans two services, so it is a saga with one owner, this service, in three steps:
1. begin: the invite is marked as being claimed by the caller (a conditional UPDATE: the first
   claimer wins, any later one is told INVITE_CLAIMED), with the sender's display name of the
   moment (the claimer's new recipient is named after it);
2. link: the recipients service's LinkInvitedUser, idempotent under the invite's id;
3. complete: the capsule gets its recipient user and the invite its claimed_at, in one transaction
   (idempotent too) with the `invite.claimed` event in the outbox (only from the completion that
   marked it claimed, under an id derived from the capsule: services/common/outbox.py), then the
   caches and kept pages learn of it.
A crash (or an unreachable recipients service) between the steps leaves a claim begun and not
completed — never a capsule half given: the claimer's repeat resumes it from step 2, and so does
the resumer, a background job of every instance, for claims older than
`CAPSULE_INVITE_RESUME_AFTER_SECONDS` (the claimer may never come back). Both steps being
idempotent, a resume racing the claimer's repeat does the work twice and changes nothing twice.
A block between the two that appears after step 1 makes step 2 refuse: the claim is abandoned
(the invite is free again) and the claimer told what an unknown token tells.

Who is told what:
- CreateInvite: the sender only (anyone else NOT_FOUND); a capsule that already has its recipient
  user is FAILED_PRECONDITION CAPSULE_DELIVERED.
- GetInvite: anyone, no token; NOT_FOUND for an unknown token or a capsule its sender deleted.
- ClaimInvite: the sender is FAILED_PRECONDITION OWN_INVITE; someone in a block with the sender,
  either way, NOT_FOUND (as for an unknown token: the block is not told); once claimed, the winner's
  repeat answers the capsule again and anyone else gets ALREADY_EXISTS INVITE_CLAIMED.
Tokens: secrets.token_urlsafe(32), 43 characters, unique, stored as issued (like shares: a token
shows only a public preview, and the claim still needs a signed-in user). One of the wrong shape
is NOT_FOUND without a query.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter

from services.capsules import invites_storage as sql
from services.capsules import public_tokens, storage
from services.capsules.capsules import Capsules, CapsuleView
from services.capsules.invites_storage import InviteRow, InviteWithCapsule
from services.capsules.neighbours import BlockedPair, InviteLink, Neighbours
from services.common import events, outbox, validation
from services.common.background import sweep
from services.common.db import Database
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.common.failpoints import failpoint
from services.common.people import Directory
from services.common.tokens import Caller

log = logging.getLogger(__name__)

# The name of the claimer's new recipient when the sender's profile cannot be read.
FALLBACK_SENDER_NAME = "user"

RESUMED = Counter("capsules_invite_claims_resumed_total", "Invite claims the resumer completed", ["outcome"])


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class InviteLinkView:
    """An invite as its sender sees it."""

    invite: InviteRow
    url: str


@dataclass(frozen=True, slots=True)
class InvitePreview:
    """What anyone holding an invite's token sees."""

    unlocks_at: datetime
    theme_id: uuid.UUID | None
    title: str
    claimed: bool


class Invites:
    def __init__(
        self,
        *,
        db: Database,
        capsules: Capsules,
        neighbours: Neighbours,
        directory: Directory,
        url_base: str,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.db = db
        self.capsules = capsules
        self.neighbours = neighbours
        self.directory = directory
        self.url_base = url_base
        self.clock = clock

    # --- the sender ------------------------------------------------------------------------------

    async def create(self, caller: Caller, capsule_id: str) -> InviteLinkView:
        cid = validation.resource_id(capsule_id, "capsule_id")
        async with self.db.write(touching=(caller.user_id,)) as conn:
            capsule = await storage.capsule(conn, cid)
            if capsule is None or capsule.sender != caller.user_id:
                raise NotFound("no capsule with this id")
            invite = await sql.invite_for_capsule(conn, cid)
            if invite is None:
                if capsule.recipient_user is not None:
                    raise FailedPrecondition(
                        "this capsule is already delivered: its recipient is on the app",
                        reason="CAPSULE_DELIVERED",
                    )
                # Concurrent first asks: one inserts, the others read its row.
                invite = await sql.insert_invite(conn, cid, public_tokens.new_token())
                if invite is None:
                    invite = await sql.invite_for_capsule(conn, cid)
                assert invite is not None
        return InviteLinkView(invite, self.url_base + invite.token)

    # --- anyone ----------------------------------------------------------------------------------

    async def preview(self, token: str) -> InvitePreview:
        found = await self._by_token(token)
        capsule = found.capsule
        return InvitePreview(capsule.unlocks_at, capsule.theme_id, capsule.title, found.invite.claimed_at is not None)

    # --- the claimer -----------------------------------------------------------------------------

    async def claim(self, caller: Caller, token: str) -> CapsuleView:
        found = await self._by_token(token)
        invite, capsule, me = found.invite, found.capsule, caller.user_id
        if capsule.sender == me:
            raise FailedPrecondition("you cannot claim an invite to your own capsule", reason="OWN_INVITE")
        if invite.claimer is not None and invite.claimer != me:
            raise _claimed()
        if invite.claimer is None:
            relationship = await self.neighbours.relationship(caller, capsule.sender)
            if relationship.blocked:
                raise _unknown_invite()
            profile = (await self.directory.profiles(caller, [capsule.sender])).get(capsule.sender)
            name = profile.display_name if profile is not None else FALLBACK_SENDER_NAME
            async with self.db.write(touching=(me,)) as conn:
                won = await sql.begin_claim(conn, invite.capsule_id, me, self.clock(), name)
                if not won:  # someone began first; a concurrent repeat of our own goes on
                    current = await sql.invite_for_capsule(conn, invite.capsule_id)
                    if current is None or current.claimer != me:
                        raise _claimed()
        failpoint("invite.claim.begun")
        if invite.claimed_at is None:
            await self.finish(invite.capsule_id)
        return await self.capsules.get(caller, str(invite.capsule_id))

    async def finish(self, capsule_id: uuid.UUID) -> None:
        """Steps 2 and 3 of a claim begun (see the module doc); safe to run again, and by anyone."""
        async with self.db.read() as conn:
            found = await sql.invite_with_capsule(conn, capsule_id)
        if found is None or found.invite.claimer is None:
            raise _unknown_invite()
        invite, capsule = found.invite, found.capsule
        claimer = invite.claimer
        assert claimer is not None
        if invite.claimed_at is None:
            link = InviteLink(
                invite_id=capsule_id,
                sender=capsule.sender,
                recipient_id=capsule.recipient_id,
                claimer=claimer,
                sender_display_name=invite.sender_name or FALLBACK_SENDER_NAME,
            )
            try:
                await self.neighbours.link_invited_user(link)
            except BlockedPair:
                async with self.db.write(touching=(claimer,)) as conn:
                    await sql.abandon_claim(conn, capsule_id, claimer)
                raise _unknown_invite() from None
            failpoint("invite.claim.linked")
        async with self.db.write(touching=(claimer, capsule.sender)) as conn:
            row, completed = await sql.complete_claim(conn, capsule_id, claimer, self.clock())
            if completed:
                # Once per invite: only the completion that marked it claimed tells, and under an
                # id derived from the capsule, so even a second emission would be the same event.
                data = {"capsule_id": str(capsule_id), "sender": str(capsule.sender), "claimer": str(claimer)}
                claimed = outbox.derived_id(events.INVITE_CLAIMED, capsule_id)
                await outbox.add(conn, outbox.event(events.INVITE_CLAIMED, data, id=claimed))
        if row is not None:
            await self.capsules.delivered(row)

    async def _by_token(self, token: str) -> InviteWithCapsule:
        if not public_tokens.well_formed(token):
            raise _unknown_invite()
        async with self.db.read() as conn:
            found = await sql.invite_by_token(conn, token)
        if found is None or found.deleted:
            raise _unknown_invite()
        return found


class InviteResumer:
    """The background job that completes claims begun and left (see the module's docstring)."""

    def __init__(
        self,
        invites: Invites,
        db: Database,
        *,
        resume_after_seconds: float,
        interval_seconds: float,
        batch_size: int = 50,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.invites = invites
        self.db = db
        self.resume_after = timedelta(seconds=resume_after_seconds)
        self.interval = interval_seconds
        self.batch_size = batch_size
        self.clock = clock

    async def run_once(self) -> int:
        """One pass: how many claims it completed."""
        async with self.db.read() as conn:
            left = await sql.unfinished_claims(conn, self.clock() - self.resume_after, self.batch_size)
        done = 0
        for invite in left:
            try:
                await self.invites.finish(invite.capsule_id)
            except NotFound:
                RESUMED.labels("abandoned").inc()  # a block appeared: the invite is free again
                continue
            except Exception as exc:  # the recipients service or a database away: next pass
                RESUMED.labels("failed").inc()
                log.warning(
                    "resuming an invite claim failed",
                    extra={"fields": {"capsule_id": str(invite.capsule_id), "error": str(exc)}},
                )
                continue
            RESUMED.labels("completed").inc()
            done += 1
        return done

    async def run(self, stop: asyncio.Event) -> None:
        # Always a pause between passes: a claim left is resumed once its owner had its chance.
        await sweep(stop, "invite resumer", self.run_once, interval=self.interval)


def _unknown_invite() -> NotFound:
    return NotFound("no invite with this token")


def _claimed() -> AlreadyExists:
    return AlreadyExists("someone else claimed this invite first", reason="INVITE_CLAIMED")
