"""Who exists and what they look like: the auth service knows (GetUsers, through Envoy). Used by
every service that shows people (recipients: connections; capsules: senders).

One batched call per use, made on the caller's behalf (their token is forwarded).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

import grpc
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc

from services.common.clients import channel, forward_metadata
from services.common.errors import Unavailable
from services.common.logs import request_id_var
from services.common.tokens import Caller


@dataclass(frozen=True, slots=True)
class Profile:
    id: uuid.UUID
    username: str
    first_name: str
    last_name: str
    avatar_url: str

    @property
    def display_name(self) -> str:
        """The name a linked recipient gets: first and last name, else the username."""
        full = " ".join(f"{self.first_name} {self.last_name}".split())
        return (full or self.username or "user")[:100]


class Directory(Protocol):
    async def profiles(self, caller: Caller, ids: list[uuid.UUID]) -> dict[uuid.UUID, Profile]: ...

    async def close(self) -> None: ...


class AuthDirectory:
    def __init__(self, target: str, timeout_seconds: float = 3.0) -> None:
        self._channel = channel(target)
        self._stub = auth_pb2_grpc.AuthServiceStub(self._channel)
        self._timeout = timeout_seconds

    async def profiles(self, caller: Caller, ids: list[uuid.UUID]) -> dict[uuid.UUID, Profile]:
        """Public profiles by id (unknown ids are absent); ≤ 100 ids, one call."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        try:
            response = await self._stub.GetUsers(
                auth_pb2.GetUsersRequest(ids=[str(u) for u in wanted]),
                timeout=self._timeout,
                metadata=forward_metadata(caller.token, request_id_var.get()),
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"cannot look users up right now ({exc.code().name})") from exc
        found: dict[uuid.UUID, Profile] = {}
        for user in response.users:
            profile = Profile(
                id=uuid.UUID(user.id),
                username=user.username,
                first_name=user.first_name,
                last_name=user.last_name,
                avatar_url=user.avatar_url,
            )
            found[profile.id] = profile
        return found

    async def close(self) -> None:
        await self._channel.close()
