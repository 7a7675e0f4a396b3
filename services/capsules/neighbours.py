"""What the capsules service asks the recipients service (through Envoy), on the sender's behalf:
is this recipient theirs, which user is it linked to, and may they send to that user.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

import grpc
from capsule.recipients.v1 import recipients_pb2, recipients_pb2_grpc, relationships_pb2, relationships_pb2_grpc

from mesh.credentials import MeshTLS
from services.common.clients import call_timeout, channel, forward_metadata
from services.common.errors import Unavailable
from services.common.ids import parse_uuid
from services.common.logs import request_id_var
from services.common.tokens import Caller


@dataclass(frozen=True, slots=True)
class RecipientLookup:
    """Whether the recipient is the caller's, and the user it is linked to (None: not linked)."""

    found: bool
    linked_user: uuid.UUID | None = None


NOT_THEIRS = RecipientLookup(found=False)


@dataclass(frozen=True, slots=True)
class Relationship:
    connected: bool
    blocked: bool


@dataclass(frozen=True, slots=True)
class InviteLink:
    """What the recipients service needs to complete its side of an invite claim."""

    invite_id: uuid.UUID
    sender: uuid.UUID
    recipient_id: uuid.UUID
    claimer: uuid.UUID
    sender_display_name: str


class BlockedPair(Exception):
    """The recipients service refused to link an invite's two users: a block exists between them."""


class Neighbours(Protocol):
    async def recipient(self, caller: Caller, recipient_id: uuid.UUID) -> RecipientLookup: ...

    async def relationship(self, caller: Caller, other: uuid.UUID) -> Relationship: ...

    async def link_invited_user(self, link: InviteLink) -> None: ...

    async def close(self) -> None: ...


class RecipientsClient:
    def __init__(self, target: str, tls: MeshTLS | None, timeout_seconds: float = 3.0) -> None:
        self._channel = channel(target, tls)
        self._timeout = timeout_seconds

    async def recipient(self, caller: Caller, recipient_id: uuid.UUID) -> RecipientLookup:
        """GetRecipient as the caller: NOT_FOUND (not theirs, or no such recipient) → NOT_THEIRS."""
        try:
            recipient = await self._channel.stub(recipients_pb2_grpc.RecipientsServiceStub).GetRecipient(
                recipients_pb2.GetRecipientRequest(id=str(recipient_id)),
                timeout=call_timeout(self._timeout),
                metadata=forward_metadata(caller.token, request_id_var.get()),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return NOT_THEIRS
            raise Unavailable(f"cannot look the recipient up right now ({exc.code().name})") from exc
        linked = parse_uuid(recipient.linked_user_id) if recipient.linked_user_id else None
        return RecipientLookup(found=True, linked_user=linked)

    async def relationship(self, caller: Caller, other: uuid.UUID) -> Relationship:
        try:
            answer = await self._channel.stub(relationships_pb2_grpc.RelationshipServiceStub).GetRelationship(
                relationships_pb2.GetRelationshipRequest(user_id=str(caller.user_id), other_user_id=str(other)),
                timeout=call_timeout(self._timeout),
                metadata=forward_metadata(caller.token, request_id_var.get()),
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"cannot check the relationship right now ({exc.code().name})") from exc
        return Relationship(connected=answer.connected, blocked=answer.blocked)

    async def link_invited_user(self, link: InviteLink) -> None:
        """LinkInvitedUser (idempotent under the invite's id). No user token goes with it: the
        capsules workload vouches for the claimer (a resumed claim has no token to send)."""
        try:
            await self._channel.stub(relationships_pb2_grpc.RelationshipServiceStub).LinkInvitedUser(
                relationships_pb2.LinkInvitedUserRequest(
                    invite_id=str(link.invite_id),
                    sender_user_id=str(link.sender),
                    recipient_id=str(link.recipient_id),
                    claimer_user_id=str(link.claimer),
                    sender_display_name=link.sender_display_name,
                ),
                timeout=call_timeout(self._timeout),
                metadata=forward_metadata(None, request_id_var.get()),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.FAILED_PRECONDITION:
                raise BlockedPair() from exc
            raise Unavailable(f"cannot link the invited user right now ({exc.code().name})") from exc

    async def close(self) -> None:
        await self._channel.close()
