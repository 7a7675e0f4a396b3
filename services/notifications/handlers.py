"""gRPC handlers of capsule.notifications.v1: decode, authenticate, call the domain, encode.

Errors raised by the domain become rich statuses in services.common.server's handler wrapper.
"""

from __future__ import annotations

from typing import TypeAlias

import grpc
from capsule.notifications.v1 import notifications_pb2 as pb
from capsule.notifications.v1 import notifications_pb2_grpc

from services.common.timestamps import set_timestamp
from services.common.tokens import Authenticator
from services.notifications.notifications import Notifications
from services.notifications.storage import NotificationRow

Context: TypeAlias = grpc.aio.ServicerContext

KINDS = {
    "capsule_ready": pb.NOTIFICATION_KIND_CAPSULE_READY,
    "connection_request_received": pb.NOTIFICATION_KIND_CONNECTION_REQUEST_RECEIVED,
    "connection_request_accepted": pb.NOTIFICATION_KIND_CONNECTION_REQUEST_ACCEPTED,
    "reply_received": pb.NOTIFICATION_KIND_REPLY_RECEIVED,
    "thought_received": pb.NOTIFICATION_KIND_THOUGHT_RECEIVED,
    "invite_claimed": pb.NOTIFICATION_KIND_INVITE_CLAIMED,
}


class NotificationsHandlers(notifications_pb2_grpc.NotificationsServiceServicer):
    """SPEC §14 (services/notifications/notifications.py holds the rules)."""

    def __init__(self, notifications: Notifications, authenticator: Authenticator) -> None:
        self.notifications = notifications
        self.auth = authenticator

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: Context
    ) -> pb.ListNotificationsResponse:
        caller = await self.auth.require(context)
        page = await self.notifications.list(caller, request.page_size, request.page_token)
        return pb.ListNotificationsResponse(
            notifications=[_notification(row) for row in page.rows], next_page_token=page.next_page_token
        )

    async def MarkRead(self, request: pb.MarkReadRequest, context: Context) -> pb.MarkReadResponse:
        caller = await self.auth.require(context)
        marked = await self.notifications.mark_read(caller, list(request.ids), request.up_to)
        return pb.MarkReadResponse(marked=marked.marked, unread_count=marked.unread_count)

    async def GetUnreadCount(self, request: pb.GetUnreadCountRequest, context: Context) -> pb.UnreadCount:
        caller = await self.auth.require(context)
        return pb.UnreadCount(unread_count=await self.notifications.unread_count(caller))


def _notification(row: NotificationRow) -> pb.Notification:
    message = pb.Notification(id=str(row.id), kind=KINDS[row.kind], read=row.read)
    for name in ("capsule_id", "request_id", "reply_id", "thought_id", "other_user_id"):
        value = getattr(row, name)
        if value is not None:
            setattr(message, name, str(value))
    set_timestamp(message.created_at, row.created_at)
    return message
