"""gRPC handlers of capsule.capsules.v1.SelfLettersService: decode, authenticate, call the domain
(services/capsules/self_letters.py), encode. Domain errors become rich statuses in
services.common.server's handler wrapper."""

from __future__ import annotations

from typing import TypeAlias

import grpc
from capsule.capsules.v1 import self_letters_pb2 as pb
from capsule.capsules.v1 import self_letters_pb2_grpc

from services.capsules.self_letters import SelfLetters, SelfLetterView
from services.common.timestamps import set_timestamp, to_datetime
from services.common.tokens import Authenticator, metadata_value

Context: TypeAlias = grpc.aio.ServicerContext

LIFE_AREAS = {
    pb.LIFE_AREA_SELF: "self",
    pb.LIFE_AREA_WORK: "work",
    pb.LIFE_AREA_FAMILY: "family",
    pb.LIFE_AREA_MONEY: "money",
    pb.LIFE_AREA_HEALTH: "health",
}
LIFE_AREA_VALUES = {name: value for value, name in LIFE_AREAS.items()}
ANSWERS = {
    pb.REFLECTION_ANSWER_YES: "yes",
    pb.REFLECTION_ANSWER_NO: "no",
    pb.REFLECTION_ANSWER_SKIPPED: "skipped",
}
ANSWER_VALUES = {name: value for value, name in ANSWERS.items()}
STATUSES = {
    "sealed": pb.SELF_LETTER_STATUS_SEALED,
    "ready": pb.SELF_LETTER_STATUS_READY,
    "opened": pb.SELF_LETTER_STATUS_OPENED,
}


class SelfLettersHandlers(self_letters_pb2_grpc.SelfLettersServiceServicer):
    def __init__(self, letters: SelfLetters, authenticator: Authenticator) -> None:
        self.letters = letters
        self.auth = authenticator

    async def CreateSelfLetter(self, request: pb.CreateSelfLetterRequest, context: Context) -> pb.SelfLetter:
        caller = await self.auth.require(context)
        seen = await self.letters.create(
            caller,
            title=request.title,
            body=request.body,
            mood=request.mood,
            # Unspecified (0) is "none given"; other numbers were refused before the handler ran.
            life_area=LIFE_AREAS.get(request.life_area),
            city=request.city,
            opens_at=to_datetime(request.opens_at) if request.HasField("opens_at") else None,
            idempotency_key=metadata_value(context, "idempotency-key"),
        )
        return _letter(seen)

    async def ListSelfLetters(self, request: pb.ListSelfLettersRequest, context: Context) -> pb.ListSelfLettersResponse:
        caller = await self.auth.require(context)
        page = await self.letters.list(caller, requested_size=request.page_size, token=request.page_token)
        response = pb.ListSelfLettersResponse(next_page_token=page.next_page_token)
        for seen in page.rows:
            _fill(response.self_letters.add(), seen)
        return response

    async def GetSelfLetter(self, request: pb.GetSelfLetterRequest, context: Context) -> pb.SelfLetter:
        caller = await self.auth.require(context)
        return _letter(await self.letters.get(caller, request.id))

    async def OpenSelfLetter(self, request: pb.OpenSelfLetterRequest, context: Context) -> pb.SelfLetter:
        caller = await self.auth.require(context)
        return _letter(await self.letters.open(caller, request.id))

    async def ReflectOnSelfLetter(self, request: pb.ReflectOnSelfLetterRequest, context: Context) -> pb.SelfLetter:
        caller = await self.auth.require(context)
        return _letter(await self.letters.reflect(caller, request.id, ANSWERS.get(request.answer)))


def _letter(seen: SelfLetterView) -> pb.SelfLetter:
    message = pb.SelfLetter()
    _fill(message, seen)
    return message


def _fill(message: pb.SelfLetter, seen: SelfLetterView) -> None:
    """Write `seen` into an empty message; the body only once opens_at has passed."""
    row = seen.row
    message.id = str(row.id)
    message.author_id = str(row.author)
    message.title = row.title
    if seen.body_visible:
        message.body = row.body
    message.mood = row.mood
    message.life_area = LIFE_AREA_VALUES[row.life_area]
    message.city = row.city
    set_timestamp(message.opens_at, row.opens_at)
    message.status = STATUSES[seen.status]
    if row.reflection is not None:
        message.reflection = ANSWER_VALUES[row.reflection]
    set_timestamp(message.created_at, row.created_at)
    if row.opened_at is not None:
        set_timestamp(message.opened_at, row.opened_at)
    if row.reflected_at is not None:
        set_timestamp(message.reflected_at, row.reflected_at)
