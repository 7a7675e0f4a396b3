"""Exactly one notification per event (SPEC §14, issue 17's first "Done when") with each process on
the way killed once mid-way and restarted: the capsules unlocker, a producer's outbox relay and the
notifications consumer, each at the failpoint where a crash hurts most (services/common/
failpoints.py: os._exit, no clean-up — a SIGKILL at that instant):

- `unlocker.published`: the ready entry is in the stream, the capsule not marked announced. The
  restarted unlocker takes it again; its marker keeps the stream to one entry — and when the
  marker was lost too (evicted: it has a TTL), the second entry is a duplicate the consumer dedupes.
- `consumer.handled`: the notification committed, the entry not acked. Redelivered: no second row.
- `consumer.read`: the entry delivered to the consumer, nothing inserted. Redelivered: one row.
- `relay.published`: the envelope XADDed, the outbox row not marked. Republished (the same event
  id): one notification.

A stack of its own, one instance of each service, so the one that dies is the one doing the work;
each scenario restarts its victim with FAILPOINTS armed (only that instance: the environment is
read at start), waits for the exit code, then restarts it unarmed. Everything waits on outcomes
(the HTTP API, the stream, the databases), never on sleeps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as redis

from launcher import infra as infra_mod
from launcher.keys import KeyPair
from launcher.stack import Stack
from services.common import events
from services.notifications.consumers import GROUP
from tests.capsules.helpers import at, bearer, eventually, new_user, pair, send, uid
from tests.conftest import CAPSULE_LEAD_SECONDS
from tests.crashes import connect_db, died_at_the_failpoint, restart, start_crash_stack
from tests.notifications.helpers import all_of, drained, stream_of, unread

pytestmark = pytest.mark.slow(30)

READY = "NOTIFICATION_KIND_CAPSULE_READY"
REQUEST = "NOTIFICATION_KIND_CONNECTION_REQUEST_RECEIVED"


@pytest.fixture(scope="module")
def stack_of_our_own(infra: infra_mod.Infra, jwt_keys: KeyPair) -> Iterator[Stack]:
    stack = start_crash_stack(
        infra,
        jwt_keys,
        {
            # TEST-ONLY, as the session stack: capsules may unlock 1 s after they are sent, and
            # a consumer's unacked entries are taken over after 1 s.
            "CAPSULE_MIN_UNLOCK_LEAD_SECONDS": str(CAPSULE_LEAD_SECONDS),
            "STREAM_CLAIM_IDLE_MS": "1000",
        },
    )
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
async def api(stack_of_our_own: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack_of_our_own.gateway_url, timeout=30.0) as client:
        yield client


@pytest.fixture
async def streams(stack_of_our_own: Stack) -> AsyncIterator[redis.Redis]:
    client: redis.Redis = redis.from_url(stack_of_our_own.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def read_all(streams: redis.Redis, stream: str) -> list[tuple[str, dict[str, str]]]:
    """Every entry of the stream, decoded (the test stack's streams are small)."""
    found: Any = await streams.xrange(stream, "-", "+")
    return [(_s(i), {_s(k): _s(v) for k, v in (f or {}).items()}) for i, f in found]


async def entries(streams: redis.Redis, stream: str, field: str, value: str) -> list[str]:
    """Ids of the stream's entries whose `field` is `value`."""
    return [i for i, fields in await read_all(streams, stream) if fields.get(field) == value]


async def about(streams: redis.Redis, stream: str, key: str, value: str) -> list[str]:
    """Ids of the envelopes on `stream` whose data has `key` = `value`."""
    return [i for i, f in await read_all(streams, stream) if orjson.loads(f.get("data", "{}")).get(key) == value]


async def pending_of(streams: redis.Redis, stream: str) -> list[str]:
    rows: Any = await streams.xpending_range(stream, GROUP, min="-", max="+", count=1000)
    return [_s(r["message_id"]) for r in rows]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def kinds(api: httpx.AsyncClient, user: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, the capsule or request it is about) of each of the user's notifications."""
    return sorted((n["kind"], n.get("capsuleId") or n.get("requestId") or "") for n in await all_of(api, user))


async def has(api: httpx.AsyncClient, user: dict[str, Any], count: int) -> None:
    """Until the user has `count` notifications (what came before a scenario, consumed)."""

    async def there() -> bool | None:
        return True if len(await all_of(api, user)) == count else None

    await eventually(there, within=20.0)


async def request(api: httpx.AsyncClient, sender: dict[str, Any], to: dict[str, Any]) -> httpx.Response:
    return await api.post("/v1/connection-requests", json={"toUserId": uid(to)}, headers=bearer(sender))


async def test_unlocker_killed_after_publishing_before_marking(
    stack_of_our_own: Stack, api: httpx.AsyncClient, streams: redis.Redis
) -> None:
    stack = stack_of_our_own
    ready = events.ready_stream(stack.cache_prefix)
    a, b, recipient = await pair(api)
    await has(api, b, 1)  # the request b received
    await restart(stack, api, "capsules", a, "unlocker.published")
    # Two letters due at the same instant: one batch of the unlocker.
    when = at(3)
    sent = [await send(api, a, recipient, unlocksAt=when) for _ in range(2)]
    assert [s.status_code for s in sent] == [200, 200], [s.text for s in sent]
    capsules = [s.json()["id"] for s in sent]
    await died_at_the_failpoint(stack, "capsules")

    # Published, not marked: the rows would be taken again.
    db = await connect_db(stack, "capsules")
    try:
        marked = "SELECT count(*) FROM capsules WHERE id = ANY($1::uuid[]) AND unlocked_event_at IS NOT NULL"
        assert await db.fetchval(marked, capsules) == 0
        assert [len(await entries(streams, ready, "capsule_id", c)) for c in capsules] == [1, 1]
        # The second one's marker lost as well (it has a TTL: evicted under memory pressure), so the
        # republish really adds a second entry for it.
        assert await streams.delete(f"{ready}:sent:{capsules[1]}") == 1

        await restart(stack, api, "capsules", a, "")

        async def announced() -> bool | None:
            return True if await db.fetchval(marked, capsules) == 2 else None

        await eventually(announced, within=20.0)
    finally:
        await db.close()
    once, twice = [await entries(streams, ready, "capsule_id", c) for c in capsules]
    assert len(once) == 1 and len(twice) == 2  # the marker held for the first; a duplicate for the second
    await drained(streams, ready, max(once + twice, key=_entry_order))
    expected = sorted([(REQUEST, _request_of(await kinds(api, b))), *((READY, c) for c in capsules)])
    assert await kinds(api, b) == expected
    assert await unread(api, b) == 3
    assert not [k for k, _ in await kinds(api, a) if k == READY]


async def test_consumer_killed_after_inserting_before_acking(
    stack_of_our_own: Stack, api: httpx.AsyncClient, streams: redis.Redis
) -> None:
    stack = stack_of_our_own
    ready = events.ready_stream(stack.cache_prefix)
    a, b, recipient = await pair(api)
    await has(api, a, 1)  # accepted
    await has(api, b, 1)  # received: nothing of theirs left for the armed consumer but the letter
    await restart(stack, api, "notifications", a, "consumer.handled")
    sent = await send(api, a, recipient, unlocksAt=at(2))
    assert sent.status_code == 200, sent.text
    capsule = sent.json()["id"]
    await died_at_the_failpoint(stack, "notifications")

    # Committed and not acked: the row is there, the entry still pending.
    (entry,) = await entries(streams, ready, "capsule_id", capsule)
    assert entry in await pending_of(streams, ready)
    db = await connect_db(stack, "notifications")
    try:
        rows = "SELECT count(*) FROM notifications WHERE capsule_id = $1::uuid"
        assert await db.fetchval(rows, capsule) == 1

        await restart(stack, api, "notifications", a, "")
        await drained(streams, ready, entry)  # delivered again, acked
        assert await db.fetchval(rows, capsule) == 1
    finally:
        await db.close()
    assert [c for k, c in await kinds(api, b) if k == READY] == [capsule]
    assert len(await kinds(api, b)) == 2 and await unread(api, b) == 2


async def test_consumer_killed_after_reading_before_inserting(
    stack_of_our_own: Stack, api: httpx.AsyncClient, streams: redis.Redis
) -> None:
    stack = stack_of_our_own
    stream = stream_of(stack, "recipients")
    a, b = await new_user(api), await new_user(api)
    await restart(stack, api, "notifications", a, "consumer.read")
    asked = await request(api, a, b)
    assert asked.status_code == 200, asked.text
    request_id = asked.json()["id"]
    await died_at_the_failpoint(stack, "notifications")

    # Delivered to the dead consumer, nothing written.
    (entry,) = await about(streams, stream, "request_id", request_id)
    assert entry in await pending_of(streams, stream)
    db = await connect_db(stack, "notifications")
    try:
        rows = "SELECT count(*) FROM notifications WHERE request_id = $1::uuid"
        assert await db.fetchval(rows, request_id) == 0

        await restart(stack, api, "notifications", a, "")
        await drained(streams, stream, entry)
        assert await db.fetchval(rows, request_id) == 1
    finally:
        await db.close()
    assert await kinds(api, b) == [(REQUEST, request_id)]
    assert await unread(api, b) == 1
    assert await kinds(api, a) == []


async def test_relay_killed_after_publishing_before_marking(
    stack_of_our_own: Stack, api: httpx.AsyncClient, streams: redis.Redis
) -> None:
    stack = stack_of_our_own
    stream = stream_of(stack, "recipients")
    a, b = await new_user(api), await new_user(api)
    db = await connect_db(stack, "recipients")
    unpublished = "SELECT id, data::text FROM outbox WHERE published_at IS NULL"
    try:

        async def relayed() -> bool | None:
            return True if not await db.fetch(unpublished) else None

        await eventually(relayed)  # the armed relay's first batch will be this request's alone
        await restart(stack, api, "recipients", a, "relay.published")
        asked = await request(api, a, b)
        # Committed before the relay's pass; the answer may lose the race with the relay's death.
        assert asked.status_code in (200, 502, 503), asked.text
        await died_at_the_failpoint(stack, "recipients")

        # In the stream once, not marked: the row will be published again.
        ((event_id, data),) = await db.fetch(unpublished)
        request_id = orjson.loads(data)["request_id"]
        assert orjson.loads(data)["to_user"] == uid(b)
        assert len(await entries(streams, stream, "id", str(event_id))) == 1

        await restart(stack, api, "recipients", a, "")
        await eventually(relayed)
    finally:
        await db.close()
    published = await entries(streams, stream, "id", str(event_id))
    assert len(published) == 2  # the same envelope twice
    await drained(streams, stream, max(published, key=_entry_order))
    assert await kinds(api, b) == [(REQUEST, request_id)]
    assert await unread(api, b) == 1
    assert await kinds(api, a) == []


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _request_of(seen: list[tuple[str, str]]) -> str:
    (request_id,) = [about for kind, about in seen if kind == REQUEST]
    return request_id
