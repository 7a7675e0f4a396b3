"""The producers of SPEC §14's events, through the real mesh: each action through the gateway
yields exactly one envelope on its service's stream (read back from the real Redis with XRANGE)
with the right type and data; an idempotent replay of a create, a refused action and a repeated
invite claim yield none.

"Exactly one": once the event is on the stream, the service's outbox holds exactly one row about
it and that row is published, so no second publication can follow (the relay only publishes
unpublished rows; tests/common/test_outbox_relay.py covers the relay itself)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from launcher.stack import Stack
from services.common import events, outbox
from services.common.events import Event
from tests.capsules.helpers import assert_problem, bearer, claim, eventually, new_user, uid
from tests.capsules.test_invites import invited_capsule
from tests.capsules.test_replies import opened_capsules, reply
from tests.recipients.helpers import ask, connect


@pytest.fixture
async def streams(stack: Stack) -> AsyncIterator[redis.Redis]:
    client = redis.from_url(stack.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def databases(stack: Stack) -> AsyncIterator[dict[str, asyncpg.Connection]]:
    conns = {}
    try:
        for service in ("recipients", "capsules"):
            dsn = stack.database_urls[service].replace("postgresql+asyncpg://", "postgresql://")
            conns[service] = await asyncpg.connect(dsn)
        yield conns
    finally:
        for conn in conns.values():
            await conn.close()


class Events:
    """The events on the session's streams that name a given id (other tests share the streams)."""

    def __init__(self, stack: Stack, client: redis.Redis, dbs: dict[str, asyncpg.Connection]) -> None:
        self.stack, self.client, self.dbs = stack, client, dbs

    async def on(self, service: str, field: str, value: str) -> list[Event]:
        stream = events.events_stream(self.stack.cache_prefix, service)
        entries: list[tuple[bytes, dict[bytes | str, bytes | str]]] = await self.client.xrange(stream)  # type: ignore[assignment]
        found = []
        for _, fields in entries:
            try:
                found.append(Event.from_fields(fields))
            except (ValueError, KeyError):
                continue  # another test's deliberately malformed entry (tests/notifications)
        return [e for e in found if e.data.get(field) == value]

    async def one(self, service: str, type_: str, field: str, value: str) -> Event:
        """The one event of `type_` naming `value` in `field`, once relayed; and no other can come:
        the outbox holds one row about it, published (the stream is read after the relay's COMMIT,
        which follows its XADD)."""

        async def published() -> list[asyncpg.Record] | None:
            rows = await self.dbs[service].fetch(
                "SELECT id, published_at FROM outbox WHERE type = $1 AND data->>$2 = $3", type_, field, value
            )
            return rows if rows and all(r["published_at"] is not None for r in rows) else None

        rows = await eventually(published)
        found = [e for e in await self.on(service, field, value) if e.type == type_]
        assert len(found) == 1, found
        assert [r["id"] for r in rows] == [found[0].id]
        return found[0]

    async def none_unpublished(self, service: str, field: str, value: str) -> None:
        """Nothing about `value` waits in the outbox (what was written is relayed or was never written)."""
        rows = await self.dbs[service].fetchval(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND data->>$1 = $2", field, value
        )
        assert rows == 0


@pytest.fixture
def seen(stack: Stack, streams: redis.Redis, databases: dict[str, asyncpg.Connection]) -> Events:
    return Events(stack, streams, databases)


def recent(event: Event) -> None:
    assert uuid.UUID(str(event.id)).version == 7  # a fresh UUIDv7, given at commit


async def test_a_request_and_its_acceptance_each_yield_one_event(client: httpx.AsyncClient, seen: Events) -> None:
    a, b = await new_user(client), await new_user(client)
    headers = {**bearer(a), "Idempotency-Key": f"ask-{uuid.uuid4()}"}
    body = {"toUserId": uid(b), "message": "hi"}
    sent = await client.post("/v1/connection-requests", json=body, headers=headers)
    assert sent.status_code == 200, sent.text
    request_id = sent.json()["id"]
    replayed = await client.post("/v1/connection-requests", json=body, headers=headers)
    assert replayed.status_code == 200 and replayed.json()["id"] == request_id
    # A refused second request (one is pending): rolled back, no event.
    assert_problem(await ask(client, a, b), 409, "REQUEST_PENDING")

    received = await seen.one("recipients", events.CONNECTION_REQUEST_RECEIVED, "request_id", request_id)
    assert received.data == {"request_id": request_id, "from_user": uid(a), "to_user": uid(b)}
    recent(received)

    accepted = await client.post(f"/v1/connection-requests/{request_id}:accept", headers=bearer(b))
    assert accepted.status_code == 200, accepted.text
    again = await client.post(f"/v1/connection-requests/{request_id}:accept", headers=bearer(b))
    assert_problem(again, 400, "REQUEST_NOT_PENDING")
    event = await seen.one("recipients", events.CONNECTION_REQUEST_ACCEPTED, "request_id", request_id)
    assert event.data == {"request_id": request_id, "from_user": uid(a), "to_user": uid(b)}
    assert [e.type for e in await seen.on("recipients", "request_id", request_id)] == [
        events.CONNECTION_REQUEST_RECEIVED,
        events.CONNECTION_REQUEST_ACCEPTED,
    ]
    await seen.none_unpublished("recipients", "request_id", request_id)


async def test_crossing_requests_yield_the_first_ones_acceptance(client: httpx.AsyncClient, seen: Events) -> None:
    a, b = await new_user(client), await new_user(client)
    first = await ask(client, a, b)
    assert first.status_code == 200, first.text
    crossing = await ask(client, b, a)  # accepts a's request
    assert crossing.status_code == 200, crossing.text
    request_id = first.json()["id"]
    assert crossing.json()["id"] == request_id
    accepted = await seen.one("recipients", events.CONNECTION_REQUEST_ACCEPTED, "request_id", request_id)
    assert accepted.data == {"request_id": request_id, "from_user": uid(a), "to_user": uid(b)}
    # b asked nothing new: b → a received nothing.
    assert [e.type for e in await seen.on("recipients", "from_user", uid(b))] == []


async def test_a_thought_yields_one_event_and_refusals_and_replays_none(
    client: httpx.AsyncClient, seen: Events
) -> None:
    a, b = await new_user(client), await new_user(client)
    stranger = await new_user(client)
    await connect(client, a, b)
    headers = {**bearer(a), "Idempotency-Key": f"thought-{uuid.uuid4()}"}
    sent = await client.post("/v1/thoughts", json={"toUserId": uid(b)}, headers=headers)
    assert sent.status_code == 200, sent.text
    replayed = await client.post("/v1/thoughts", json={"toUserId": uid(b)}, headers=headers)
    assert replayed.status_code == 200 and replayed.json()["id"] == sent.json()["id"]
    assert_problem(
        await client.post("/v1/thoughts", json={"toUserId": uid(b)}, headers=bearer(a)), 409, "THOUGHT_ALREADY_SENT"
    )
    assert_problem(
        await client.post("/v1/thoughts", json={"toUserId": uid(stranger)}, headers=bearer(a)), 404, "NOT_FOUND"
    )

    event = await seen.one("recipients", events.THOUGHT_RECEIVED, "sender", uid(a))
    assert event.data == {"thought_id": sent.json()["id"], "sender": uid(a), "receiver": uid(b)}
    await seen.none_unpublished("recipients", "sender", uid(a))


async def test_a_reply_yields_one_event_and_a_replay_or_a_second_reply_none(
    client: httpx.AsyncClient, seen: Events
) -> None:
    a, b, (cid,) = await opened_capsules(client)
    key = f"reply-{uuid.uuid4()}"
    made = await reply(client, b, cid, key, emoji="\U0001f64f", text="thanks")
    assert made.status_code == 200, made.text
    again = await reply(client, b, cid, key, emoji="\U0001f64f", text="thanks")
    assert again.status_code == 200 and again.json()["id"] == made.json()["id"]
    assert_problem(await reply(client, b, cid, emoji="\U0001f622"), 409, "REPLY_EXISTS")

    event = await seen.one("capsules", events.REPLY_RECEIVED, "capsule_id", cid)
    assert event.data == {"reply_id": made.json()["id"], "capsule_id": cid, "author": uid(b), "capsule_sender": uid(a)}
    await seen.none_unpublished("capsules", "capsule_id", cid)


async def test_an_invite_claim_yields_one_event_under_its_derived_id(client: httpx.AsyncClient, seen: Events) -> None:
    sender, capsule_id, token, _ = await invited_capsule(client)
    claimer, other = await new_user(client), await new_user(client)
    assert (await claim(client, token, claimer)).status_code == 200
    assert (await claim(client, token, claimer)).status_code == 200  # the winner's repeat
    assert_problem(await claim(client, token, other), 409, "INVITE_CLAIMED")

    event = await seen.one("capsules", events.INVITE_CLAIMED, "capsule_id", capsule_id)
    assert event.id == outbox.derived_id(events.INVITE_CLAIMED, uuid.UUID(capsule_id))
    assert event.data == {"capsule_id": capsule_id, "sender": uid(sender), "claimer": uid(claimer)}
    await seen.none_unpublished("capsules", "capsule_id", capsule_id)
