"""The recipients' side of an invite claim (SPEC §13, RelationshipService.LinkInvitedUser).

A capsule may go to a recipient linked to no one; its sender shares an invite, and whoever claims
it becomes that recipient. The capsules service owns invites and drives the claim as a resumable
saga; this is its middle step, asked on the claimer's behalf by the capsules workload (no user
token: a claim resumed in the background has none). What accepting a connection request does, in
one transaction under the pair's advisory lock (relationships.py's lock):

- the sender's recipient `recipient_id` becomes linked to the claimer — unless the sender already
  has a recipient linked to the claimer: that one is the answer and the invited entry stays
  unlinked (one linked recipient per owner and user: recipients_owner_linked_user_key). When the
  invited entry was deleted or linked to someone else since the capsule was sent, the sender gets
  a new recipient linked to the claimer, named like the invited entry if it still exists, else
  DEFAULT_NAME (no claimer's profile here: reading it from auth needs a user token);
- the pair is connected (one row per pair); the claimer gets a recipient linked to the sender,
  named `sender_display_name` (whitespace collapsed, cut at the recipients' name limit: the name
  comes from auth's profile, whose first and last names may be longer together, and refusing it
  would leave the claim stuck forever; empty: DEFAULT_NAME, as accepting does); an existing one is
  kept as it is;
- a pending connection request between the two, either way, becomes accepted;
- the invite is recorded (invite_links, primary key invite_id) with the answer.

Idempotent under `invite_id`: a repeat answers the recorded result and writes nothing, even if
things changed since (a block, a deleted recipient). The same invite for another pair cannot come
from the capsules service (the first claimer wins there) and is refused, FAILED_PRECONDITION,
without writing. A block either way: FAILED_PRECONDITION NOT_CONNECTED (the capsules service
answers its claimer as for an unknown token), nothing written.
"""

from __future__ import annotations

import uuid

import sqlalchemy.exc
from capsule.recipients.v1 import recipients_pb2
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common import field_rules, validation
from services.common.db import Database, violated_constraint
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.ids import new_id
from services.recipients import storage
from services.recipients.relationships import Relationships

# The name of a linked recipient when there is nothing better (the accept path's, too).
DEFAULT_NAME = "user"
# A concurrent address-book edit can take the (owner, linked user) slot between our look-up and our
# write: the transaction is then run again, and finds that entry.
ATTEMPTS = 2


class Invites:
    def __init__(self, *, db: Database, relationships: Relationships) -> None:
        self.db = db
        self.relationships = relationships

    async def link_invited_user(
        self,
        *,
        invite_id: str,
        sender_user_id: str,
        recipient_id: str,
        claimer_user_id: str,
        sender_display_name: str,
    ) -> uuid.UUID:
        """The sender's recipient now linked to the claimer (see the module doc)."""
        invite = validation.resource_id(invite_id, "invite_id")
        sender = validation.resource_id(sender_user_id, "sender_user_id")
        invited = validation.resource_id(recipient_id, "recipient_id")
        claimer = validation.resource_id(claimer_user_id, "claimer_user_id")
        if sender == claimer:
            raise InvalidArgument(
                "the sender cannot claim their own invite",
                violations=[("claimer_user_id", "must not be the sender")],
            )
        name = claimer_side_name(sender_display_name)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self.db.write(touching=(sender, claimer)) as conn:
                    await storage.lock_pair(conn, sender, claimer)
                    answer = await self._link(conn, invite, sender, invited, claimer, name)
                break
            except sqlalchemy.exc.IntegrityError as exc:
                if attempt == ATTEMPTS or violated_constraint(exc) != "recipients_owner_linked_user_key":
                    raise
        # After COMMIT, also on a repeat: a crash between the first COMMIT and this refresh would
        # otherwise leave the pair's cached answer stale until it expires.
        await self.relationships.refresh_pair(sender, claimer)
        return answer

    async def _link(
        self,
        conn: AsyncConnection,
        invite: uuid.UUID,
        sender: uuid.UUID,
        invited: uuid.UUID,
        claimer: uuid.UUID,
        name: str,
    ) -> uuid.UUID:
        # Under the pair lock: repeats of one invite are serialised here. The same invite for
        # another pair (another lock) is caught by invite_links' primary key at INSERT.
        prior = await storage.invite_link(conn, invite)
        if prior is not None:
            if (prior.sender, prior.claimer) != (sender, claimer):
                raise _linked_elsewhere()
            return prior.sender_recipient_id
        if await storage.blocked_either_way(conn, sender, claimer):
            raise FailedPrecondition("these users cannot be connected", reason="NOT_CONNECTED")

        linked = await storage.linked_recipient(conn, sender, claimer)
        if linked is None:
            linked = await storage.link_unlinked_recipient(conn, sender, invited, claimer)
        if linked is None:
            # Deleted, or linked to someone else since the capsule went to it.
            entry = await storage.recipient(conn, sender, invited)
            await storage.ensure_linked_recipient(
                conn, id=new_id(), owner=sender, linked_user=claimer, name=entry.name if entry else DEFAULT_NAME
            )
            linked = await storage.linked_recipient(conn, sender, claimer)
            assert linked is not None
        await storage.insert_connection(conn, new_id(), sender, claimer)
        await storage.ensure_linked_recipient(conn, id=new_id(), owner=claimer, linked_user=sender, name=name)
        for asker, asked in ((sender, claimer), (claimer, sender)):
            pending = await storage.pending_request(conn, asker, asked)
            if pending is not None:
                await storage.set_request_status(conn, pending.id, "accepted")
        try:
            await storage.insert_invite_link(
                conn, invite_id=invite, sender=sender, claimer=claimer, sender_recipient_id=linked.id
            )
        except sqlalchemy.exc.IntegrityError as exc:
            # Raised inside the write: the whole transaction is rolled back, nothing is kept.
            if violated_constraint(exc) == "invite_links_pkey":
                raise _linked_elsewhere() from None
            raise
        return linked.id


# A recipient's name as Recipient.name declares it (recipients.proto).
NAME_MAX = field_rules.declared(recipients_pb2.Recipient.DESCRIPTOR.fields_by_name["name"]).max_length  # type: ignore[union-attr]


def claimer_side_name(display_name: str) -> str:
    """The claimer's recipient's name: the sender's display name, whitespace collapsed and cut to
    the recipients' limit; DEFAULT_NAME when empty."""
    name = " ".join(display_name.split())[:NAME_MAX].rstrip()
    return name or DEFAULT_NAME


def _linked_elsewhere() -> FailedPrecondition:
    return FailedPrecondition(
        "this invite was already linked for another pair of users", reason="INVITE_ALREADY_LINKED"
    )
