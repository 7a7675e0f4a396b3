"""gRPC handlers of capsule.capsules.v1: decode, authenticate, call the domain, encode.

Errors raised by the domain become rich statuses in services.common.server's handler wrapper.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
from capsule.capsules.v1 import capsules_pb2 as pb
from capsule.capsules.v1 import capsules_pb2_grpc
from google.protobuf import empty_pb2

from services.capsules.capsules import Capsules, CapsuleView
from services.capsules.storage import ThemeRow
from services.capsules.themes import Themes
from services.common.people import DELETED_ACCOUNT, public_profile
from services.common.timestamps import set_timestamp, to_datetime
from services.common.tokens import Authenticator, metadata_value

Context: TypeAlias = grpc.aio.ServicerContext

STATUSES = {
    "sealed": pb.CAPSULE_STATUS_SEALED,
    "ready": pb.CAPSULE_STATUS_READY,
    "opened": pb.CAPSULE_STATUS_OPENED,
}
STATUS_FILTERS = {value: name for name, value in STATUSES.items()}


class CapsulesHandlers(capsules_pb2_grpc.CapsulesServiceServicer):
    def __init__(self, capsules: Capsules, authenticator: Authenticator) -> None:
        self.capsules = capsules
        self.auth = authenticator

    async def CreateCapsule(self, request: pb.CreateCapsuleRequest, context: Context) -> pb.Capsule:
        caller = await self.auth.require(context)
        seen = await self.capsules.create(
            caller,
            recipient_id=request.recipient_id,
            title=request.title,
            body=request.body,
            theme_id=request.theme_id,
            unlocks_at=to_datetime(request.unlocks_at) if request.HasField("unlocks_at") else None,
            anonymous=request.anonymous,
            reveal_delay_seconds=(request.reveal_delay_seconds if request.HasField("reveal_delay_seconds") else None),
            idempotency_key=metadata_value(context, "idempotency-key"),
            disappear_after_open_seconds=(
                request.disappear_after_open_seconds if request.HasField("disappear_after_open_seconds") else None
            ),
        )
        return _capsule(seen)

    async def ListCapsules(self, request: pb.ListCapsulesRequest, context: Context) -> pb.ListCapsulesResponse:
        caller = await self.auth.require(context)
        page = await self.capsules.list_box(
            caller,
            box="outbox" if request.box == pb.BOX_OUTBOX else "inbox",
            status=STATUS_FILTERS.get(request.status, ""),
            requested_size=request.page_size,
            token=request.page_token,
        )
        response = pb.ListCapsulesResponse(next_page_token=page.next_page_token)
        for seen in page.rows:
            _fill_capsule(response.capsules.add(), seen)
        return response

    async def GetInboxSummary(self, request: pb.GetInboxSummaryRequest, context: Context) -> pb.InboxSummary:
        caller = await self.auth.require(context)
        summary = await self.capsules.summary(caller)
        message = pb.InboxSummary(
            sealed=summary.sealed, ready=summary.ready, opened=summary.opened, total=summary.total
        )
        if summary.next_unlocks_at is not None:
            set_timestamp(message.next_unlocks_at, summary.next_unlocks_at)
        return message

    async def GetCapsule(self, request: pb.GetCapsuleRequest, context: Context) -> pb.Capsule:
        caller = await self.auth.require(context)
        return _capsule(await self.capsules.get(caller, request.id))

    async def UpdateCapsule(self, request: pb.UpdateCapsuleRequest, context: Context) -> pb.Capsule:
        caller = await self.auth.require(context)
        c = request.capsule
        values: dict[str, Any] = {
            "title": c.title,
            "body": c.body,
            "theme_id": c.theme_id,
            "unlocks_at": to_datetime(c.unlocks_at) if c.HasField("unlocks_at") else None,
        }
        seen = await self.capsules.update(caller, request.id, values, list(request.update_mask.paths))
        return _capsule(seen)

    async def DeleteCapsule(self, request: pb.DeleteCapsuleRequest, context: Context) -> empty_pb2.Empty:
        caller = await self.auth.require(context)
        await self.capsules.delete(caller, request.id)
        return empty_pb2.Empty()

    async def OpenCapsule(self, request: pb.OpenCapsuleRequest, context: Context) -> pb.Capsule:
        caller = await self.auth.require(context)
        return _capsule(await self.capsules.open(caller, request.id))


class ThemesHandlers(capsules_pb2_grpc.ThemesServiceServicer):
    """The catalog is public (no token needed): the same for everyone, cacheable by any HTTP cache."""

    def __init__(self, themes: Themes) -> None:
        self.themes = themes

    async def ListThemes(self, request: pb.ListThemesRequest, context: Context) -> pb.ListThemesResponse:
        page = await self.themes.list(request.page_size, request.page_token)
        return pb.ListThemesResponse(themes=[_theme(t) for t in page.rows], next_page_token=page.next_page_token)

    async def GetTheme(self, request: pb.GetThemeRequest, context: Context) -> pb.Theme:
        return _theme(await self.themes.get(request.id))


def _capsule(seen: CapsuleView) -> pb.Capsule:
    message = pb.Capsule()
    _fill_capsule(message, seen)
    return message


def _fill_capsule(message: pb.Capsule, seen: CapsuleView) -> None:
    """Write `seen` into an empty message (a list page fills `capsules.add()` in place: no copy)."""
    row = seen.row
    message.id = str(row.id)
    if seen.sender_hidden:
        pass  # anonymous, not yet revealed: not even whether the sender still exists
    elif row.sender == DELETED_ACCOUNT:
        message.sender_deleted = True  # shown from "a deleted account": no id, no profile
    else:
        message.sender_id = str(row.sender)
    if seen.as_sender:
        message.recipient_id = str(row.recipient_id)
    message.recipient_user_id = str(row.recipient_user) if row.recipient_user is not None else ""
    message.title = row.title
    if seen.body_visible and row.body is not None:
        message.body = row.body
    if row.theme_id:
        message.theme_id = str(row.theme_id)
    message.anonymous = row.anonymous
    message.reveal_delay_seconds = row.reveal_delay_seconds
    message.status = STATUSES[seen.status]
    message.sender_hidden = seen.sender_hidden
    if seen.sender_profile is not None:
        public_profile(seen.sender_profile, message.sender)
    set_timestamp(message.unlocks_at, row.unlocks_at)
    set_timestamp(message.created_at, row.created_at)
    set_timestamp(message.updated_at, row.updated_at)
    if row.opened_at is not None:
        set_timestamp(message.opened_at, row.opened_at)
    if row.disappear_after_seconds is not None:
        message.disappear_after_open_seconds = row.disappear_after_seconds
    if row.disappears_at is not None:
        set_timestamp(message.disappears_at, row.disappears_at)
    message.disappeared = seen.disappeared


def _theme(row: ThemeRow) -> pb.Theme:
    return pb.Theme(
        id=str(row.id),
        name=row.name,
        description=row.description,
        gradient_start=row.gradient_start,
        gradient_end=row.gradient_end,
        premium=row.premium,
    )
