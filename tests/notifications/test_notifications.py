"""Notifications (SPEC §14) through the real mesh: the consumers turn each event of the streams
into exactly one notification (twice delivered, or read by a consumer that died before its ack),
and the routes list, count and mark them for their owner only."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from launcher.stack import Stack
from services.common import events
from services.notifications.consumers import GROUP
from tests.capsules.helpers import assert_problem, at, bearer, eventually, new_user, pair, send, uid
from tests.notifications.helpers import (
    COUNT,
    LIST,
    MARK,
    all_of,
    drained,
    ensure_group,
    envelope,
    listed,
    mark,
    stream_of,
    unread,
)

pytestmark = pytest.mark.slow(20)


async def publish(streams: redis.Redis, stream: str, event: events.Event) -> bytes | str:
    return await streams.xadd(stream, event.fields())  # type: ignore[arg-type]


async def seed(
    stack: Stack, streams: redis.Redis, user: dict[str, Any], other: dict[str, Any], count: int
) -> list[events.Event]:
    """`count` thoughts received by `user` from `other`, consumed (oldest first)."""
    stream = stream_of(stack, "recipients")
    sent = [
        envelope(events.THOUGHT_RECEIVED, thought_id=str(uuid.uuid4()), sender=uid(other), receiver=uid(user))
        for _ in range(count)
    ]
    for event in sent:
        # One at a time: two instances' consumers may take a burst's entries and insert them in
        # either order, and the list is in the order of the notifications (their time-ordered
        # ids), not of the events.
        await drained(streams, stream, await publish(streams, stream, event))
    return sent


# --- the consumers --------------------------------------------------------------------------------


async def test_each_event_type_becomes_its_kind_for_its_user(
    api: httpx.AsyncClient, stack: Stack, streams: redis.Redis
) -> None:
    a, b = await new_user(api), await new_user(api)
    request, thought, reply, capsule = (str(uuid.uuid4()) for _ in range(4))
    cases = [
        # (producer, event, the user notified, the kind, the ids it shows)
        (
            "recipients",
            envelope(events.CONNECTION_REQUEST_RECEIVED, request_id=request, from_user=uid(a), to_user=uid(b)),
            b,
            "NOTIFICATION_KIND_CONNECTION_REQUEST_RECEIVED",
            {"requestId": request, "otherUserId": uid(a)},
        ),
        (
            "recipients",
            envelope(events.CONNECTION_REQUEST_ACCEPTED, request_id=request, from_user=uid(a), to_user=uid(b)),
            a,
            "NOTIFICATION_KIND_CONNECTION_REQUEST_ACCEPTED",
            {"requestId": request, "otherUserId": uid(b)},
        ),
        (
            "recipients",
            envelope(events.THOUGHT_RECEIVED, thought_id=thought, sender=uid(a), receiver=uid(b)),
            b,
            "NOTIFICATION_KIND_THOUGHT_RECEIVED",
            {"thoughtId": thought, "otherUserId": uid(a)},
        ),
        (
            "capsules",
            envelope(events.REPLY_RECEIVED, reply_id=reply, capsule_id=capsule, author=uid(b), capsule_sender=uid(a)),
            a,
            "NOTIFICATION_KIND_REPLY_RECEIVED",
            {"replyId": reply, "capsuleId": capsule, "otherUserId": uid(b)},
        ),
        (
            "capsules",
            envelope(events.INVITE_CLAIMED, capsule_id=capsule, sender=uid(a), claimer=uid(b)),
            a,
            "NOTIFICATION_KIND_INVITE_CLAIMED",
            {"capsuleId": capsule, "otherUserId": uid(b)},
        ),
    ]
    for producer, event, _, _, _ in cases:
        await drained(streams, stream_of(stack, producer), await publish(streams, stream_of(stack, producer), event))
    seen = {uid(a): await all_of(api, a), uid(b): await all_of(api, b)}
    assert len(seen[uid(a)]) == 3 and len(seen[uid(b)]) == 2
    for _, event, user, kind, ids in cases:
        (found,) = [n for n in seen[uid(user)] if n["kind"] == kind]
        shown = {k: v for k, v in found.items() if k.endswith("Id") and v}
        assert shown == ids, (event.type, found)
        assert found["read"] is False and found["createdAt"].endswith("Z")


async def test_a_duplicate_delivery_changes_nothing(
    api: httpx.AsyncClient, stack: Stack, streams: redis.Redis, notifications_db: asyncpg.Connection
) -> None:
    a, b = await new_user(api), await new_user(api)
    stream = stream_of(stack, "recipients")
    event = envelope(events.THOUGHT_RECEIVED, thought_id=str(uuid.uuid4()), sender=uid(a), receiver=uid(b))
    await publish(streams, stream, event)
    await drained(streams, stream, await publish(streams, stream, event))  # the same entry again
    assert await notifications_db.fetchval("SELECT count(*) FROM notifications WHERE event_id = $1", event.id) == 1
    assert len(await all_of(api, b)) == 1 and await unread(api, b) == 1


async def test_a_malformed_entry_is_acked_and_does_not_block_the_stream(
    api: httpx.AsyncClient, stack: Stack, streams: redis.Redis
) -> None:
    a, b = await new_user(api), await new_user(api)
    stream = stream_of(stack, "capsules")
    await streams.xadd(stream, {"id": "not a uuid", "type": "reply.received", "occurred_at": "x", "data": "{"})
    await streams.xadd(stream, {"id": str(uuid.uuid4()), "type": "no.such.type", "occurred_at": at(0), "data": "{}"})
    good = envelope(events.INVITE_CLAIMED, capsule_id=str(uuid.uuid4()), sender=uid(a), claimer=uid(b))
    await drained(streams, stream, await publish(streams, stream, good))
    assert [n["kind"] for n in await all_of(api, a)] == ["NOTIFICATION_KIND_INVITE_CLAIMED"]


async def test_a_ready_capsule_notifies_its_recipient_once(
    api: httpx.AsyncClient, stack: Stack, streams: redis.Redis, notifications_db: asyncpg.Connection
) -> None:
    a, b, recipient = await pair(api)
    sent = await send(api, a, recipient, unlocksAt=at(2))
    assert sent.status_code == 200, sent.text
    capsule = sent.json()["id"]

    async def ready() -> list[dict[str, Any]] | None:
        found = [n for n in await all_of(api, b) if n["kind"] == "NOTIFICATION_KIND_CAPSULE_READY"]
        return found or None

    (notification,) = await eventually(ready, within=20.0)
    # The capsule only: its sender may be anonymous, the capsule says what may be shown.
    assert notification["capsuleId"] == capsule and not notification.get("otherUserId")
    # The unlocker's entry delivered again (a publish retried): still one.
    stream = events.ready_stream(stack.cache_prefix)
    again = {"capsule_id": capsule, "recipient_user": uid(b), "sender": uid(a), "unlocks_at": at(0)}
    await drained(streams, stream, await streams.xadd(stream, again))  # type: ignore[arg-type]
    rows = await notifications_db.fetch("SELECT user_id FROM notifications WHERE capsule_id = $1", uuid.UUID(capsule))
    assert [str(r["user_id"]) for r in rows] == [uid(b)]
    assert not [n for n in await all_of(api, a) if n["kind"] == "NOTIFICATION_KIND_CAPSULE_READY"]


async def test_an_entry_read_by_a_consumer_that_died_is_taken_over_once(
    api: httpx.AsyncClient, stack: Stack, streams: redis.Redis, notifications_db: asyncpg.Connection
) -> None:
    a, b = await new_user(api), await new_user(api)
    stream = stream_of(stack, "recipients")
    await ensure_group(streams, stream)
    event = envelope(events.CONNECTION_REQUEST_RECEIVED, request_id=str(uuid.uuid4()), from_user=uid(a), to_user=uid(b))
    # Published and read by "dead" in one transaction: the service's blocked readers cannot get it
    # first. "dead" never acks it (it died), so only XAUTOCLAIM can bring it to a live consumer.
    async with streams.pipeline(transaction=True) as tx:
        tx.xadd(stream, event.fields())  # type: ignore[arg-type]
        tx.xreadgroup(GROUP, "dead", {stream: ">"}, count=1000)
        entry_id, taken = await tx.execute()
    assert any(i == entry_id for _, entries in taken for i, _ in entries)
    dead = await streams.xpending_range(stream, GROUP, min="-", max="+", count=1000, consumername="dead")
    assert entry_id in [p["message_id"] for p in dead]

    async def taken_over() -> bool | None:
        left = await streams.xpending_range(stream, GROUP, min="-", max="+", count=1000, consumername="dead")
        return True if not left else None

    await eventually(taken_over, within=15.0)
    await drained(streams, stream, entry_id)
    assert await notifications_db.fetchval("SELECT count(*) FROM notifications WHERE event_id = $1", event.id) == 1
    assert [n["kind"] for n in await all_of(api, b)] == ["NOTIFICATION_KIND_CONNECTION_REQUEST_RECEIVED"]


# --- the routes -----------------------------------------------------------------------------------


async def test_the_list_pages_newest_first_for_its_owner_only(
    api: httpx.AsyncClient, stack: Stack, streams: redis.Redis
) -> None:
    a, b = await new_user(api), await new_user(api)
    sent = await seed(stack, streams, b, a, 5)
    expected = [str(e.data["thought_id"]) for e in reversed(sent)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await listed(api, b, pageSize=2, pageToken=token)
        seen += [n["thoughtId"] for n in page.get("notifications", [])]
        pages += 1
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert seen == expected and pages == 3
    # Another user's token, an edited one: refused; the other user sees none of b's.
    first = await listed(api, b, pageSize=2)
    assert_problem(
        await api.get(LIST, params={"pageToken": first["nextPageToken"]}, headers=bearer(a)),
        400,
        "MALFORMED_PAGE_TOKEN",
        ["pageToken"],
    )
    assert_problem(
        await api.get(LIST, params={"pageToken": first["nextPageToken"] + "x"}, headers=bearer(b)),
        400,
        "MALFORMED_PAGE_TOKEN",
        ["pageToken"],
    )
    assert await all_of(api, a) == []
    # The page size is capped, not refused; a negative one is.
    assert len((await listed(api, b, pageSize=1000))["notifications"]) == 5
    assert_problem(await api.get(LIST, params={"pageSize": -1}, headers=bearer(b)), 400, "INVALID_FIELDS", ["pageSize"])
    for path in (LIST, COUNT):
        assert (await api.get(path)).status_code == 401
    assert (await api.post(MARK, json={"upTo": expected[0]})).status_code == 401


async def test_mark_read_by_ids_and_up_to_and_the_unread_count(
    api: httpx.AsyncClient, stack: Stack, streams: redis.Redis
) -> None:
    a, b = await new_user(api), await new_user(api)
    await seed(stack, streams, b, a, 5)
    ids = [n["id"] for n in await all_of(api, b)]  # newest first
    assert await unread(api, b) == 5

    marked = await mark(api, b, {"ids": [ids[0], ids[2]]})
    assert marked.status_code == 200, marked.text
    assert marked.json().get("marked") == 2 and int(marked.json()["unreadCount"]) == 3
    assert await unread(api, b) == 3
    # Again: nothing changes.
    again = (await mark(api, b, {"ids": [ids[0]]})).json()
    assert again.get("marked", 0) == 0 and int(again["unreadCount"]) == 3
    assert [n["read"] for n in await all_of(api, b)] == [True, False, True, False, False]

    # Up to the second oldest: it and the oldest.
    up_to = (await mark(api, b, {"upTo": ids[3]})).json()
    assert up_to.get("marked") == 2 and int(up_to["unreadCount"]) == 1
    assert [n["id"] for n in await all_of(api, b) if not n["read"]] == [ids[1]]
    assert await unread(api, b) == 1
    everything = (await mark(api, b, {"upTo": ids[0]})).json()
    assert everything.get("marked") == 1 and int(everything.get("unreadCount", 0)) == 0
    assert await unread(api, b) == 0


async def test_mark_read_refusals_and_other_users_ids(
    api: httpx.AsyncClient, stack: Stack, streams: redis.Redis
) -> None:
    a, b = await new_user(api), await new_user(api)
    await seed(stack, streams, b, a, 2)
    await seed(stack, streams, a, b, 1)
    mine = [n["id"] for n in await all_of(api, b)]
    theirs = [n["id"] for n in await all_of(api, a)]

    both = ["ids", "upTo"]
    assert_problem(await mark(api, b, {}), 400, "INVALID_FIELDS", both)
    assert_problem(await mark(api, b, {"ids": [], "upTo": ""}), 400, "INVALID_FIELDS", both)
    assert_problem(await mark(api, b, {"ids": [mine[0]], "upTo": mine[1]}), 400, "INVALID_FIELDS", both)
    assert_problem(await mark(api, b, {"ids": [mine[0], "nope"]}), 400, "INVALID_FIELDS", ["ids[1]"])
    assert_problem(await mark(api, b, {"ids": [str(uuid.uuid4())] * 101}), 400, "INVALID_FIELDS", ["ids"])
    assert_problem(await mark(api, b, {"upTo": "nope"}), 400, "INVALID_FIELDS", ["upTo"])
    assert_problem(await mark(api, b, {"ids": ["a\u0000"]}), 400, "INVALID_FIELDS")
    # Someone else's notification as the bound: not found (nothing tells it exists), nothing marked.
    assert_problem(await mark(api, b, {"upTo": theirs[0]}), 404, "NOT_FOUND", ["upTo"])
    assert_problem(await mark(api, b, {"upTo": str(uuid.uuid4())}), 404, "NOT_FOUND", ["upTo"])
    # Someone else's ids, unknown ids: nothing changes for anyone.
    other = (await mark(api, b, {"ids": [theirs[0], str(uuid.uuid4())]})).json()
    assert other.get("marked", 0) == 0 and int(other["unreadCount"]) == 2
    assert await unread(api, a) == 1 and await unread(api, b) == 2
    assert not any(n["read"] for n in await all_of(api, a) + await all_of(api, b))
