"""gRPC handlers of capsule.capsules.v1's InvitesService (SPEC §13): decode, authenticate
(GetInvite is public: no token), call the domain (invites.py), encode."""

from __future__ import annotations

from typing import TypeAlias

import grpc
from capsule.capsules.v1 import capsules_pb2, invites_pb2, invites_pb2_grpc

from services.capsules.handlers import _capsule
from services.capsules.invites import Invites
from services.common.timestamps import set_timestamp
from services.common.tokens import Authenticator

Context: TypeAlias = grpc.aio.ServicerContext


class InvitesHandlers(invites_pb2_grpc.InvitesServiceServicer):
    def __init__(self, invites: Invites, authenticator: Authenticator) -> None:
        self.invites = invites
        self.auth = authenticator

    async def CreateInvite(self, request: invites_pb2.CreateInviteRequest, context: Context) -> invites_pb2.Invite:
        caller = await self.auth.require(context)
        made = await self.invites.create(caller, request.capsule_id)
        message = invites_pb2.Invite(token=made.invite.token, url=made.url, capsule_id=str(made.invite.capsule_id))
        if made.invite.claimed_at is not None:
            set_timestamp(message.claimed_at, made.invite.claimed_at)
        return message

    async def GetInvite(self, request: invites_pb2.GetInviteRequest, context: Context) -> invites_pb2.InvitePreview:
        seen = await self.invites.preview(request.token)
        message = invites_pb2.InvitePreview(
            theme_id=str(seen.theme_id) if seen.theme_id else "", title=seen.title, claimed=seen.claimed
        )
        set_timestamp(message.unlocks_at, seen.unlocks_at)
        return message

    async def ClaimInvite(self, request: invites_pb2.ClaimInviteRequest, context: Context) -> capsules_pb2.Capsule:
        caller = await self.auth.require(context)
        return _capsule(await self.invites.claim(caller, request.token))
