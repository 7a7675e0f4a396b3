"""services.common.people.CachedDirectory and the ChangeFeed under it, against a real redis-server
of the test's own (frozen, killed and restarted by the tests).

A counting stand-in replaces the auth service (what is measured is who answers); everything about
Redis is real. The properties:
- a copy is used while it is fresh; a change published by the owner is applied before the next
  read (no wait: the reader catches up with what was delivered), here and in a second process;
- a load that a change overtook is not kept;
- while the feed cannot vouch for its copies (Redis frozen or gone) every read asks the owner, and
  a resubscription starts from nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import pytest
import redis.asyncio as redis

from services.common.changefeed import ChangeFeed, Publisher
from services.common.people import CachedDirectory, Profile, publish_profile_change
from services.common.tokens import Caller
from tests.ratelimit.redis_server import RedisServer

PING = 0.2  # the feeds' ping interval: a silence of 3 of them and copies are not trusted
CALLER = Caller(user_id=uuid.uuid4(), session_id="s", token="t")


class Auth:
    """The owner of profiles: answers from a dict and counts the ids it was asked for."""

    def __init__(self) -> None:
        self.names: dict[uuid.UUID, str] = {}
        self.asked: list[uuid.UUID] = []
        self.before_answer: Callable[[], Awaitable[None]] | None = None

    async def profiles(self, caller: Caller, ids: list[uuid.UUID]) -> dict[uuid.UUID, Profile]:
        self.asked += ids
        answer = {i: Profile(i, self.names[i], self.names[i], "", "") for i in ids if i in self.names}
        if self.before_answer is not None:
            await self.before_answer()
        return answer

    async def close(self) -> None:
        pass


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class Mesh:
    """Two processes' directories (same channel) and the owner's publisher."""

    def __init__(self, url: str) -> None:
        self.prefix = f"t{uuid.uuid4().hex[:8]}:"
        self.auth = Auth()
        self.feeds = [ChangeFeed(url, ping_interval=PING, reconnect_delay=0.1) for _ in range(2)]
        self.copies = [CachedDirectory(self.auth, feed, self.prefix) for feed in self.feeds]
        self.client = redis.from_url(url, socket_timeout=0.2)
        self.publisher = Publisher(self.client, retry_delay=0.05, announce_within=4 * PING)

    async def start(self) -> None:
        for feed in self.feeds:
            feed.start()
        await eventually(lambda: all(feed.healthy for feed in self.feeds))

    async def change(self, user: uuid.UUID, name: str) -> None:
        self.auth.names[user] = name
        await publish_profile_change(self.publisher, self.prefix, user)
        # Redis may answer the publisher a moment before it writes to the subscribers; a round trip
        # after the answer (as any request through the mesh is, and more) finds them written.
        with contextlib.suppress(redis.RedisError):
            await self.client.ping()

    async def close(self) -> None:
        await self.publisher.close()
        for directory, feed in zip(self.copies, self.feeds, strict=True):
            await directory.close()
            await feed.close()
        await self.client.aclose()


@pytest.fixture
async def mesh(redis_server: RedisServer) -> AsyncIterator[Mesh]:
    m = Mesh(redis_server.url)
    await m.start()
    try:
        yield m
    finally:
        await m.close()


async def names(directory: CachedDirectory, *users: uuid.UUID) -> list[str]:
    found = await directory.profiles(CALLER, list(users))
    return [found[u].username for u in users if u in found]


async def kept_copy(mesh: Mesh, index: int) -> tuple[uuid.UUID, CachedDirectory]:
    """A user "ada" whose profile process `index` now keeps a copy of."""
    ada = uuid.uuid4()
    mesh.auth.names[ada] = "ada"
    directory = mesh.copies[index]
    assert await names(directory, ada) == ["ada"]
    return ada, directory


async def test_copies_are_used_until_the_owner_publishes_a_change(mesh: Mesh) -> None:
    ada, bob = uuid.uuid4(), uuid.uuid4()
    mesh.auth.names.update({ada: "ada", bob: "bob"})
    first, second = mesh.copies
    assert await names(first, ada, bob) == ["ada", "bob"]
    assert await names(second, ada) == ["ada"]
    asked = len(mesh.auth.asked)
    for _ in range(5):
        assert await names(first, ada, bob) == ["ada", "bob"]
        assert await names(second, ada) == ["ada"]
    assert len(mesh.auth.asked) == asked, "fresh copies must not ask the owner"

    await mesh.change(ada, "ada2")
    # The very next read, in either process, sees it: no waiting for the feed's own loop.
    assert await names(second, ada) == ["ada2"]
    assert await names(first, ada, bob) == ["ada2", "bob"]
    assert mesh.auth.asked[asked:] == [ada, ada], "only the changed profile is asked again"


async def test_unknown_ids_are_not_remembered(mesh: Mesh) -> None:
    newcomer = uuid.uuid4()
    first = mesh.copies[0]
    assert await names(first, newcomer) == []
    mesh.auth.names[newcomer] = "new"  # signs up: no change message for a new user
    assert await names(first, newcomer) == ["new"]


async def test_a_load_overtaken_by_a_change_is_not_kept(mesh: Mesh) -> None:
    ada = uuid.uuid4()
    mesh.auth.names[ada] = "old"
    first = mesh.copies[0]

    async def change_while_answering() -> None:
        mesh.auth.before_answer = None
        await mesh.change(ada, "new")
        await mesh.feeds[0].catch_up()

    mesh.auth.before_answer = change_while_answering
    # Built from the owner's state before the change (the stand-in answers what it read first).
    assert await names(first, ada) == ["old"]
    assert await names(first, ada) == ["new"], "the overtaken answer must not have been kept"


async def test_a_frozen_redis_makes_every_read_ask_the_owner_and_a_resubscription_starts_empty(
    mesh: Mesh, redis_server: RedisServer
) -> None:
    ada, first = await kept_copy(mesh, 0)
    redis_server.freeze()
    try:
        # Unanswered pings: within three ping intervals the copies are no longer trusted.
        await eventually(lambda: not mesh.feeds[0].healthy)
        mesh.auth.names[ada] = "changed while nobody could be told"
        asked = len(mesh.auth.asked)
        assert await names(first, ada) == ["changed while nobody could be told"]
        assert len(mesh.auth.asked) == asked + 1
    finally:
        redis_server.thaw()
    await eventually(lambda: mesh.feeds[0].healthy)
    asked = len(mesh.auth.asked)
    assert await names(first, ada) == ["changed while nobody could be told"]
    assert len(mesh.auth.asked) == asked + 1, "a resubscribed feed must start without copies"


class FlakyRedis(redis.Redis):
    """A real client whose first `failures` PUBLISH commands fail as if the owner lost Redis
    (a partition between the owner and Redis only: the subscribers stay connected)."""

    failures = 2

    async def publish(self, channel, message, **kwargs):  # type: ignore[no-untyped-def, override]
        if self.failures > 0:
            self.failures -= 1
            raise redis.ConnectionError("partitioned from the owner (test)")
        return await super().publish(channel, message, **kwargs)


async def test_a_publish_that_failed_is_retried_until_redis_takes_it(mesh: Mesh, redis_server: RedisServer) -> None:
    ada, second = await kept_copy(mesh, 1)
    flaky = cast(FlakyRedis, FlakyRedis.from_url(redis_server.url))
    publisher = Publisher(flaky, retry_delay=0.05)
    try:
        mesh.auth.names[ada] = "ada2"
        await publish_profile_change(publisher, mesh.prefix, ada)  # fails: retried in the background
        assert mesh.feeds[1].healthy
        asked = len(mesh.auth.asked)

        async def sees_the_change() -> bool:
            return await names(second, ada) == ["ada2"]

        deadline = time.monotonic() + 10
        while not await sees_the_change():
            assert time.monotonic() < deadline, "the retried publish never arrived"
            await asyncio.sleep(0.02)
        assert flaky.failures == 0 and len(mesh.auth.asked) == asked + 1
    finally:
        await publisher.close()
        await flaky.aclose()


async def test_a_change_made_while_redis_is_frozen_answers_only_once_no_copy_can_hide_it(
    mesh: Mesh, redis_server: RedisServer
) -> None:
    ada, second = await kept_copy(mesh, 1)
    redis_server.freeze()
    try:
        started = time.monotonic()
        await mesh.change(ada, "ada2")  # its announcement cannot get through
        assert time.monotonic() - started >= 4 * PING, "a failed announcement must wait out the silence limit"
        # Answered: from now on no process may serve the old copy, Redis frozen or not.
        assert await names(second, ada) == ["ada2"]
    finally:
        redis_server.thaw()
    assert await names(second, ada) == ["ada2"]
    await eventually(lambda: all(feed.healthy for feed in mesh.feeds))
    assert await names(second, ada) == ["ada2"]
