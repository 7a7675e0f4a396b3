"""gRPC handlers of capsule.recipients.v1: decode, authenticate, call the domain, encode.

Errors raised by the domain become rich statuses in services.common.server's handler wrapper.
"""

from __future__ import annotations

from typing import TypeAlias

import grpc
from capsule.recipients.v1 import (
    recipients_pb2 as pb,
)
from capsule.recipients.v1 import (
    recipients_pb2_grpc,
    relationships_pb2,
    relationships_pb2_grpc,
    thoughts_pb2,
    thoughts_pb2_grpc,
)
from google.protobuf import empty_pb2

from services.common.people import public_profile
from services.common.timestamps import set_timestamp
from services.common.tokens import Authenticator, metadata_value
from services.recipients.address_book import AddressBook
from services.recipients.invites import Invites
from services.recipients.relationships import ConnectionWithProfile, Relationships
from services.recipients.storage import BlockRow, RecipientRow, RequestRow, ThoughtRow
from services.recipients.thoughts import Thoughts, ThoughtWithProfile

STATUSES = {
    "pending": pb.CONNECTION_REQUEST_STATUS_PENDING,
    "accepted": pb.CONNECTION_REQUEST_STATUS_ACCEPTED,
    "declined": pb.CONNECTION_REQUEST_STATUS_DECLINED,
    "cancelled": pb.CONNECTION_REQUEST_STATUS_CANCELLED,
}

Context: TypeAlias = grpc.aio.ServicerContext


class RecipientsHandlers(recipients_pb2_grpc.RecipientsServiceServicer):
    def __init__(self, relationships: Relationships, address_book: AddressBook, authenticator: Authenticator) -> None:
        self.relationships = relationships
        self.book = address_book
        self.auth = authenticator

    # --- connection requests ---------------------------------------------------------------------

    async def SendConnectionRequest(
        self, request: pb.SendConnectionRequestRequest, context: Context
    ) -> pb.ConnectionRequest:
        caller = await self.auth.require(context)
        row = await self.relationships.send(
            caller, request.to_user_id, request.message, metadata_value(context, "idempotency-key")
        )
        return _request(row)

    async def ListConnectionRequests(
        self, request: pb.ListConnectionRequestsRequest, context: Context
    ) -> pb.ListConnectionRequestsResponse:
        caller = await self.auth.require(context)
        page = await self.relationships.list_requests(
            caller,
            incoming=request.direction != pb.DIRECTION_OUTGOING,
            requested_size=request.page_size,
            token=request.page_token,
        )
        return pb.ListConnectionRequestsResponse(
            connection_requests=[_request(r) for r in page.rows], next_page_token=page.next_page_token
        )

    async def AcceptConnectionRequest(
        self, request: pb.AcceptConnectionRequestRequest, context: Context
    ) -> pb.ConnectionRequest:
        caller = await self.auth.require(context)
        return _request(await self.relationships.accept(caller, request.id))

    async def DeclineConnectionRequest(
        self, request: pb.DeclineConnectionRequestRequest, context: Context
    ) -> pb.ConnectionRequest:
        caller = await self.auth.require(context)
        return _request(await self.relationships.decline(caller, request.id, request.reason))

    async def CancelConnectionRequest(
        self, request: pb.CancelConnectionRequestRequest, context: Context
    ) -> pb.ConnectionRequest:
        caller = await self.auth.require(context)
        return _request(await self.relationships.cancel(caller, request.id))

    # --- connections and blocks ----------------------------------------------------------------

    async def ListConnections(self, request: pb.ListConnectionsRequest, context: Context) -> pb.ListConnectionsResponse:
        caller = await self.auth.require(context)
        page = await self.relationships.list_connections(caller, request.page_size, request.page_token)
        return pb.ListConnectionsResponse(
            connections=[_connection(c) for c in page.rows], next_page_token=page.next_page_token
        )

    async def RemoveConnection(self, request: pb.RemoveConnectionRequest, context: Context) -> empty_pb2.Empty:
        caller = await self.auth.require(context)
        await self.relationships.remove_connection(caller, request.user_id)
        return empty_pb2.Empty()

    async def ListBlocks(self, request: pb.ListBlocksRequest, context: Context) -> pb.ListBlocksResponse:
        caller = await self.auth.require(context)
        page = await self.relationships.list_blocks(caller, request.page_size, request.page_token)
        return pb.ListBlocksResponse(blocks=[_block(b) for b in page.rows], next_page_token=page.next_page_token)

    async def BlockUser(self, request: pb.BlockUserRequest, context: Context) -> pb.Block:
        caller = await self.auth.require(context)
        return _block(await self.relationships.block(caller, request.user_id))

    async def UnblockUser(self, request: pb.UnblockUserRequest, context: Context) -> empty_pb2.Empty:
        caller = await self.auth.require(context)
        await self.relationships.unblock(caller, request.user_id)
        return empty_pb2.Empty()

    # --- recipients ----------------------------------------------------------------------------

    async def ListRecipients(self, request: pb.ListRecipientsRequest, context: Context) -> pb.ListRecipientsResponse:
        caller = await self.auth.require(context)
        page = await self.book.list(
            caller, query=request.query, requested_size=request.page_size, token=request.page_token
        )
        return pb.ListRecipientsResponse(
            recipients=[_recipient(r) for r in page.rows], next_page_token=page.next_page_token
        )

    async def CreateRecipient(self, request: pb.CreateRecipientRequest, context: Context) -> pb.Recipient:
        caller = await self.auth.require(context)
        row = await self.book.create(
            caller, name=request.name, email=request.email, linked_user_id=request.linked_user_id
        )
        return _recipient(row)

    async def GetRecipient(self, request: pb.GetRecipientRequest, context: Context) -> pb.Recipient:
        caller = await self.auth.require(context)
        return _recipient(await self.book.get(caller, request.id))

    async def UpdateRecipient(self, request: pb.UpdateRecipientRequest, context: Context) -> pb.Recipient:
        caller = await self.auth.require(context)
        r = request.recipient
        values = {"name": r.name, "email": r.email, "linked_user_id": r.linked_user_id}
        row = await self.book.update(caller, request.id, values, list(request.update_mask.paths))
        return _recipient(row)

    async def DeleteRecipient(self, request: pb.DeleteRecipientRequest, context: Context) -> empty_pb2.Empty:
        caller = await self.auth.require(context)
        await self.book.delete(caller, request.id)
        return empty_pb2.Empty()


class RelationshipHandlers(relationships_pb2_grpc.RelationshipServiceServicer):
    """Internal API for other services (no HTTP routes)."""

    def __init__(self, relationships: Relationships, authenticator: Authenticator, invites: Invites) -> None:
        self.relationships = relationships
        self.auth = authenticator
        self.invites = invites

    async def ListBlockedUserIds(
        self, request: relationships_pb2.ListBlockedUserIdsRequest, context: Context
    ) -> relationships_pb2.ListBlockedUserIdsResponse:
        caller = await self.auth.require(context)
        users = await self.relationships.blocked_with(caller, request.user_id)
        return relationships_pb2.ListBlockedUserIdsResponse(user_ids=[str(u) for u in users])

    async def GetRelationship(
        self, request: relationships_pb2.GetRelationshipRequest, context: Context
    ) -> relationships_pb2.GetRelationshipResponse:
        caller = await self.auth.require(context)
        answer = await self.relationships.relationship(caller, request.user_id, request.other_user_id)
        return relationships_pb2.GetRelationshipResponse(connected=answer.connected, blocked=answer.blocked)

    async def LinkInvitedUser(
        self, request: relationships_pb2.LinkInvitedUserRequest, context: Context
    ) -> relationships_pb2.LinkInvitedUserResponse:
        # No user token (a claim the capsules service resumes in the background has none): the
        # caller is the capsules workload, vouching for the claimer. Its mesh identity is checked
        # against the proto's `callers` option before this runs (services.common.server.instrument
        # and Envoy's RBAC, both from mesh.catalog.method_callers); any other workload is refused.
        linked = await self.invites.link_invited_user(
            invite_id=request.invite_id,
            sender_user_id=request.sender_user_id,
            recipient_id=request.recipient_id,
            claimer_user_id=request.claimer_user_id,
            sender_display_name=request.sender_display_name,
        )
        return relationships_pb2.LinkInvitedUserResponse(sender_recipient_id=str(linked))


class ThoughtsHandlers(thoughts_pb2_grpc.ThoughtsServiceServicer):
    """SPEC §13 thoughts (services/recipients/thoughts.py holds the rules)."""

    def __init__(self, thoughts: Thoughts, authenticator: Authenticator) -> None:
        self.thoughts = thoughts
        self.auth = authenticator

    async def SendThought(self, request: thoughts_pb2.SendThoughtRequest, context: Context) -> thoughts_pb2.Thought:
        caller = await self.auth.require(context)
        row = await self.thoughts.send(caller, request.to_user_id, metadata_value(context, "idempotency-key"))
        return _thought(row)

    async def ListThoughts(
        self, request: thoughts_pb2.ListThoughtsRequest, context: Context
    ) -> thoughts_pb2.ListThoughtsResponse:
        caller = await self.auth.require(context)
        page = await self.thoughts.list(
            caller, THOUGHT_DIRECTIONS.get(request.direction, ""), request.page_size, request.page_token
        )
        return thoughts_pb2.ListThoughtsResponse(
            thoughts=[_thought(item.thought, item) for item in page.rows], next_page_token=page.next_page_token
        )


THOUGHT_DIRECTIONS = {
    thoughts_pb2.THOUGHT_DIRECTION_INCOMING: "incoming",
    thoughts_pb2.THOUGHT_DIRECTION_OUTGOING: "outgoing",
}


def _thought(row: ThoughtRow, item: ThoughtWithProfile | None = None) -> thoughts_pb2.Thought:
    message = thoughts_pb2.Thought(id=str(row.id), user_id=str(row.other))
    if item is not None and item.profile is not None:
        public_profile(item.profile, message.user)
    set_timestamp(message.created_at, row.created_at)
    return message


def _request(row: RequestRow) -> pb.ConnectionRequest:
    message = pb.ConnectionRequest(
        id=str(row.id),
        from_user_id=str(row.from_user),
        to_user_id=str(row.to_user),
        message=row.message,
        status=STATUSES[row.status],
        decline_reason=row.decline_reason,
    )
    set_timestamp(message.created_at, row.created_at)
    if row.responded_at is not None:
        set_timestamp(message.responded_at, row.responded_at)
    return message


def _connection(item: ConnectionWithProfile) -> pb.Connection:
    row = item.connection
    message = pb.Connection(id=str(row.id), user_id=str(row.other))
    if item.profile is not None:
        public_profile(item.profile, message.user)
    set_timestamp(message.created_at, row.created_at)
    return message


def _block(row: BlockRow) -> pb.Block:
    message = pb.Block(id=str(row.id), user_id=str(row.blocked))
    set_timestamp(message.created_at, row.created_at)
    return message


def _recipient(row: RecipientRow) -> pb.Recipient:
    message = pb.Recipient(
        id=str(row.id),
        name=row.name,
        email=row.email or "",
        linked_user_id=str(row.linked_user) if row.linked_user else "",
    )
    set_timestamp(message.created_at, row.created_at)
    set_timestamp(message.updated_at, row.updated_at)
    return message
