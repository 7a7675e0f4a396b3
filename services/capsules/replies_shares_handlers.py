"""gRPC handlers of capsule.capsules.v1's RepliesService and SharesService (SPEC §13): decode,
authenticate (GetShare is public: no token), call the domain (replies.py, shares.py), encode."""

from __future__ import annotations

from typing import TypeAlias

import grpc
from capsule.capsules.v1 import replies_pb2, replies_pb2_grpc, shares_pb2, shares_pb2_grpc
from google.protobuf import empty_pb2

from services.capsules.handlers import _theme
from services.capsules.replies import Replies
from services.capsules.replies_shares_storage import ReplyRow, ShareRow
from services.capsules.shares import Shares
from services.common.timestamps import set_timestamp
from services.common.tokens import Authenticator, metadata_value

Context: TypeAlias = grpc.aio.ServicerContext

KINDS = {
    "story": shares_pb2.SHARE_KIND_STORY,
    "video": shares_pb2.SHARE_KIND_VIDEO,
    "static": shares_pb2.SHARE_KIND_STATIC,
    "link": shares_pb2.SHARE_KIND_LINK,
}
KIND_NAMES = {value: name for name, value in KINDS.items()}


class RepliesHandlers(replies_pb2_grpc.RepliesServiceServicer):
    def __init__(self, replies: Replies, authenticator: Authenticator) -> None:
        self.replies = replies
        self.auth = authenticator

    async def CreateReply(self, request: replies_pb2.CreateReplyRequest, context: Context) -> replies_pb2.Reply:
        caller = await self.auth.require(context)
        row = await self.replies.create(
            caller,
            request.capsule_id,
            text=request.text,
            emoji_value=request.emoji,
            idempotency_key=metadata_value(context, "idempotency-key"),
        )
        return _reply(row)

    async def GetReply(self, request: replies_pb2.GetReplyRequest, context: Context) -> replies_pb2.Reply:
        caller = await self.auth.require(context)
        return _reply(await self.replies.get(caller, request.capsule_id))


class SharesHandlers(shares_pb2_grpc.SharesServiceServicer):
    def __init__(self, shares: Shares, authenticator: Authenticator) -> None:
        self.shares = shares
        self.auth = authenticator

    async def CreateShare(self, request: shares_pb2.CreateShareRequest, context: Context) -> shares_pb2.Share:
        caller = await self.auth.require(context)
        row = await self.shares.create(
            caller,
            request.capsule_id,
            kind=KIND_NAMES.get(request.kind, ""),
            idempotency_key=metadata_value(context, "idempotency-key"),
        )
        return _share(row)

    async def GetShare(self, request: shares_pb2.GetShareRequest, context: Context) -> shares_pb2.SharedCountdown:
        seen = await self.shares.get(request.token)
        message = shares_pb2.SharedCountdown(
            kind=KINDS[seen.kind],
            state=shares_pb2.COUNTDOWN_STATE_UNLOCKED if seen.unlocked else shares_pb2.COUNTDOWN_STATE_COUNTING,
            sender_display_name=seen.sender_display_name,
            anonymous=seen.anonymous,
        )
        set_timestamp(message.unlocks_at, seen.unlocks_at)
        if seen.theme is not None:
            message.theme.CopyFrom(_theme(seen.theme))
        return message

    async def DeleteShare(self, request: shares_pb2.DeleteShareRequest, context: Context) -> empty_pb2.Empty:
        caller = await self.auth.require(context)
        await self.shares.revoke(caller, request.capsule_id, request.token)
        return empty_pb2.Empty()


def _reply(row: ReplyRow) -> replies_pb2.Reply:
    message = replies_pb2.Reply(
        id=str(row.id), capsule_id=str(row.capsule_id), author_id=str(row.author), text=row.text, emoji=row.emoji
    )
    set_timestamp(message.created_at, row.created_at)
    return message


def _share(row: ShareRow) -> shares_pb2.Share:
    message = shares_pb2.Share(token=row.token, capsule_id=str(row.capsule_id), kind=KINDS[row.kind])
    set_timestamp(message.created_at, row.created_at)
    return message
