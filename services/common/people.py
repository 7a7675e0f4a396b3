"""Who exists and what they look like: the auth service knows (GetUsers, through Envoy). Used by
every service that shows people (recipients: connections; capsules: senders).

- `AuthDirectory`: one batched GetUsers call per use, on the caller's behalf (their token is
  forwarded).
- `CachedDirectory`: the public profiles kept in this process for PROFILE_TTL_SECONDS (SPEC §9:
  profiles 5 min), so an inbox page does not cost a call to auth. The auth service publishes the id
  of every user whose profile changed (`publish_profile_change`, after its commit) on the mesh's
  profile channel; the process's `ChangeFeed` drops that user's copy, and before a copy is used the
  feed catches up with what was already delivered (services/common/changefeed.py says why that
  makes an update visible to the next read, and what happens when Redis is away: copies are not
  trusted and every page asks auth).
- Unknown ids are not remembered: a user who signs up later is found at once.

`public_profile` is the one mapping of a person (auth's user rows, the `Profile`s kept here) to the
PublicProfile message every service answers with.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc
from capsule.common.v1 import common_pb2

from mesh.credentials import MeshTLS
from services.common.changefeed import ChangeFeed, Publisher
from services.common.clients import call_timeout, channel, forward_metadata
from services.common.errors import Unauthenticated, Unavailable
from services.common.kept import KeptCopies
from services.common.logs import request_id_var
from services.common.tokens import Caller

# Who sent a letter that stayed with its recipient after its sender deleted their account (SPEC
# §14: shown from "a deleted account"): the capsules service puts the nil UUID in its sender, so
# no row still points at the person, and nobody is ever notified on its behalf.
DELETED_ACCOUNT = uuid.UUID(int=0)


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


class PublicFields(Protocol):
    """What every view of a person has that anyone may see."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def username(self) -> str: ...
    @property
    def first_name(self) -> str: ...
    @property
    def last_name(self) -> str: ...
    @property
    def avatar_url(self) -> str: ...


def public_profile(person: PublicFields, message: common_pb2.PublicProfile | None = None) -> common_pb2.PublicProfile:
    """`person` as a PublicProfile: written into `message` when given (a field of a larger message,
    or a list's `add()`: filled in place, no copy), else into a new one."""
    if message is None:
        message = common_pb2.PublicProfile()
    message.id = str(person.id)
    message.username = person.username
    message.first_name = person.first_name
    message.last_name = person.last_name
    message.avatar_url = person.avatar_url
    return message


class Directory(Protocol):
    async def profiles(self, caller: Caller, ids: list[uuid.UUID]) -> dict[uuid.UUID, Profile]: ...

    async def close(self) -> None: ...


class AuthDirectory:
    def __init__(self, target: str, tls: MeshTLS | None, timeout_seconds: float = 3.0) -> None:
        self._channel = channel(target, tls)
        self._timeout = timeout_seconds

    async def profiles(self, caller: Caller, ids: list[uuid.UUID]) -> dict[uuid.UUID, Profile]:
        """Public profiles by id (unknown ids are absent); ≤ 100 ids, one call."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        try:
            response = await self._channel.stub(auth_pb2_grpc.AuthServiceStub).GetUsers(
                auth_pb2.GetUsersRequest(ids=[str(u) for u in wanted]),
                timeout=call_timeout(self._timeout),
                metadata=forward_metadata(caller.token, request_id_var.get()),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                # Auth refused the caller's own token (its session ended, its account is gone):
                # so do we, rather than blame the mesh.
                raise Unauthenticated(exc.details() or "the access token is not valid", reason="TOKEN_INVALID") from exc
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


PROFILE_TTL_SECONDS = 300


def profile_channel(mesh_prefix: str) -> str:
    """The channel on which auth names users whose public profile changed (one per mesh: the
    prefix is CACHE_PREFIX before any service's own part)."""
    return f"{mesh_prefix}auth:profile-changed"


async def publish_profile_change(publisher: Publisher, mesh_prefix: str, user_id: uuid.UUID) -> None:
    await publisher.publish(profile_channel(mesh_prefix), str(user_id).encode())


class CachedDirectory:
    """A Directory that keeps public profiles in this process (see the module doc); `feed` is the
    process's ChangeFeed (started by the service once everything subscribed)."""

    def __init__(
        self,
        inner: Directory,
        feed: ChangeFeed,
        mesh_prefix: str,
        *,
        ttl_seconds: float = PROFILE_TTL_SECONDS,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._copies: KeptCopies[Profile] = KeptCopies(
            feed,
            profile_channel(mesh_prefix),
            "profile_copy",
            ttl_seconds=ttl_seconds,
            max_entries=max_entries,
            clock=clock,
        )

    async def profiles(self, caller: Caller, ids: list[uuid.UUID]) -> dict[uuid.UUID, Profile]:
        # A deleted account has no profile: never worth a look-up (kept letters name it).
        wanted = [u for u in dict.fromkeys(ids) if u != DELETED_ACCOUNT]
        if not wanted:
            return {}
        if not await self._copies.trusted():
            return await self._inner.profiles(caller, wanted)
        found, missing = self._copies.get_many(wanted)
        if missing:
            mark = self._copies.mark()
            loaded = await self._inner.profiles(caller, missing)
            self._copies.keep(loaded, mark)
            found.update(loaded)
        return found

    async def exists(self, caller: Caller) -> bool:
        """Whether the caller's own account exists (tokens.KnownCallers): usually a kept copy."""
        return caller.user_id in await self.profiles(caller, [caller.user_id])

    async def close(self) -> None:
        await self._inner.close()
