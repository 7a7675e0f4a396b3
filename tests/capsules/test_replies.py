"""Replies (SPEC §13) through the gateway: the recipient of an opened capsule replies once with one
of seven emoji and ≤ 60 characters; sender and recipient read it; every refusal writes nothing."""

from __future__ import annotations

import asyncio
import unicodedata
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.capsules.helpers import assert_problem, at, bearer, eventually, new_user, pair, send, uid

pytestmark = pytest.mark.slow(8)  # scheduled first: see tests/conftest.py


async def opened_capsules(
    api: httpx.AsyncClient, count: int = 1, **fields: Any
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """A connected pair A → B and `count` capsules from A that B has opened."""
    a, b, to_b = await pair(api)
    ids = []
    for _ in range(count):
        created = await send(api, a, to_b, unlocksAt=at(2), **fields)
        assert created.status_code == 200, created.text
        ids.append(created.json()["id"])

    for cid in ids:

        async def opened(cid: str = cid) -> dict[str, Any] | None:
            response = await api.post(f"/v1/capsules/{cid}:open", headers=bearer(b), json={})
            return dict(response.json()) if response.status_code == 200 else None

        await eventually(opened)
    return a, b, ids


def reply(api: httpx.AsyncClient, who: dict[str, Any], cid: str, key: str | None = None, **body: Any) -> Any:
    headers = bearer(who)
    if key is not None:
        headers["Idempotency-Key"] = key
    return api.post(f"/v1/capsules/{cid}/reply", json=body, headers=headers)


async def stored(db: asyncpg.Connection, cid: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM capsule_replies WHERE capsule_id = $1::uuid", cid))


async def test_reply_once_then_both_sides_read_it(api: httpx.AsyncClient, capsules_db: asyncpg.Connection) -> None:
    a, b, (cid,) = await opened_capsules(api)
    assert_problem(await api.get(f"/v1/capsules/{cid}/reply", headers=bearer(a)), 404, "NOT_FOUND")
    assert_problem(await api.get(f"/v1/capsules/{cid}/reply", headers=bearer(b)), 404, "NOT_FOUND")

    # "❤" without its variation selector is the same heart; stored in the canonical spelling.
    made = await reply(api, b, cid, text="  thank you, truly  ", emoji="\u2764")
    assert made.status_code == 200, made.text
    body = made.json()
    assert body["emoji"] == "\u2764\ufe0f" and body["text"] == "thank you, truly"
    assert body["capsuleId"] == cid and body["authorId"] == uid(b) and uuid.UUID(body["id"]).version == 7
    for who in (a, b):
        got = await api.get(f"/v1/capsules/{cid}/reply", headers=bearer(who))
        assert got.status_code == 200 and got.json() == body
        assert got.headers["cache-control"] == "private, max-age=0"

    # Once: a second reply, even a different one, is 409 and changes nothing.
    assert_problem(await reply(api, b, cid, text="again", emoji="\U0001f64f"), 409, "REPLY_EXISTS")
    assert await stored(capsules_db, cid) == 1
    assert (await api.get(f"/v1/capsules/{cid}/reply", headers=bearer(a))).json() == body


async def test_every_refusal_names_its_reason_and_writes_nothing(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    a, b, (cid,) = await opened_capsules(api)
    refusals: list[tuple[dict[str, Any], int, str, list[str] | None]] = [
        ({"emoji": "\U0001f44d"}, 400, "INVALID_FIELDS", ["emoji"]),  # 👍: not one of the seven
        ({"emoji": "\U0001f64f\U0001f3fd"}, 400, "INVALID_FIELDS", ["emoji"]),  # 🙏 with a skin tone
        ({"emoji": "\u2764\ufe0f\u2764\ufe0f"}, 400, "INVALID_FIELDS", ["emoji"]),  # two of them
        ({"text": "hi"}, 400, "INVALID_FIELDS", ["emoji"]),  # required
        ({"text": "x" * 61, "emoji": "\U0001f60a"}, 400, "INVALID_FIELDS", ["text"]),
        ({"text": "\U0001f600" * 61, "emoji": "\U0001f60a"}, 400, "INVALID_FIELDS", ["text"]),  # code points
        ({"text": "line\u0007bell", "emoji": "\U0001f60a"}, 400, "INVALID_FIELDS", ["text"]),
        ({"text": "nul\u0000", "emoji": "\U0001f60a"}, 400, "INVALID_FIELDS", ["text"]),
        ({"text": "x" * 61, "emoji": "?"}, 400, "INVALID_FIELDS", ["text", "emoji"]),  # every one at once
        ({"text": 5, "emoji": "\U0001f60a"}, 400, "INVALID_FIELDS", ["text"]),  # a wrong JSON type
    ]
    for fields, status, reason, named in refusals:
        assert_problem(await reply(api, b, cid, **fields), status, reason, named)
    assert_problem(await reply(api, b, "not-a-uuid", emoji="\U0001f60a"), 400, "INVALID_FIELDS", ["capsuleId"])
    assert_problem(await reply(api, b, str(uuid.uuid4()), emoji="\U0001f60a"), 404, "NOT_FOUND")
    bad_key = await reply(api, b, cid, key="k" * 201, emoji="\U0001f60a")
    assert_problem(bad_key, 400, "INVALID_FIELDS", ["idempotencyKey"])
    assert await stored(capsules_db, cid) == 0

    # Not yet opened: sealed, then ready, are both refused with the reason.
    to_b = await capsules_db.fetchval("SELECT recipient_id::text FROM capsules WHERE id = $1::uuid", cid)
    sealed = (await send(api, a, to_b, unlocksAt=at(3600))).json()["id"]
    assert_problem(await reply(api, b, sealed, emoji="\U0001f60a"), 400, "CAPSULE_NOT_OPENED")
    ready = (await send(api, a, to_b, unlocksAt=at(2))).json()["id"]

    async def is_ready() -> bool | None:
        seen = (await api.get(f"/v1/capsules/{ready}", headers=bearer(b))).json()
        return True if seen["status"] == "CAPSULE_STATUS_READY" else None

    await eventually(is_ready)
    assert_problem(await reply(api, b, ready, emoji="\U0001f60a"), 400, "CAPSULE_NOT_OPENED")
    assert await stored(capsules_db, sealed) == 0 and await stored(capsules_db, ready) == 0

    # The bounds themselves are accepted: 60 code points, counted after NFC (60 "é" written as
    # e + combining accent are 120 code points before it).
    decomposed = unicodedata.normalize("NFD", "\u00e9" * 60)
    assert len(decomposed) == 120
    made = await reply(api, b, cid, text=decomposed, emoji="\U0001f979")
    assert made.status_code == 200, made.text
    assert made.json()["text"] == "\u00e9" * 60 and made.json()["emoji"] == "\U0001f979"
    assert await stored(capsules_db, cid) == 1


async def test_authorization_matrix_stranger_sender_recipient_blocked(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    a, b, (first, second, third) = await opened_capsules(api, 3)
    stranger = await new_user(api)
    # Stranger and sender cannot reply (the capsule is not theirs to answer): 404, like no capsule.
    assert_problem(await reply(api, stranger, first, emoji="\U0001f60e"), 404, "NOT_FOUND")
    assert_problem(await reply(api, a, first, emoji="\U0001f60e"), 404, "NOT_FOUND")
    assert await stored(capsules_db, first) == 0
    made = await reply(api, b, first, emoji="\U0001f60e")
    assert made.status_code == 200, made.text
    # Sender and recipient read it; a stranger gets the same 404 as for a capsule without a reply.
    assert (await api.get(f"/v1/capsules/{first}/reply", headers=bearer(a))).status_code == 200
    assert_problem(await api.get(f"/v1/capsules/{first}/reply", headers=bearer(stranger)), 404, "NOT_FOUND")

    # The sender blocks the recipient: the recipient's reply is refused exactly like one after a
    # removed connection (the block is never revealed), and writes nothing.
    assert (await api.post("/v1/blocks", json={"userId": uid(b)}, headers=bearer(a))).status_code == 200
    assert_problem(await reply(api, b, second, emoji="\U0001f622"), 400, "NOT_CONNECTED", ["capsuleId"])
    assert await stored(capsules_db, second) == 0
    # What existed stays readable by both sides, as the capsules themselves do.
    for who in (a, b):
        got = await api.get(f"/v1/capsules/{first}/reply", headers=bearer(who))
        assert got.status_code == 200 and got.json() == made.json()
    # Unblocked but no longer connected: the same answer.
    assert (await api.delete(f"/v1/blocks/{uid(b)}", headers=bearer(a))).status_code == 200
    assert_problem(await reply(api, b, third, emoji="\U0001f622"), 400, "NOT_CONNECTED", ["capsuleId"])
    assert await stored(capsules_db, third) == 0

    # The recipient blocking the sender: refused the same way.
    c, d, (cid,) = await opened_capsules(api)
    assert (await api.post("/v1/blocks", json={"userId": uid(c)}, headers=bearer(d))).status_code == 200
    assert_problem(await reply(api, d, cid, emoji="\U0001f90d"), 400, "NOT_CONNECTED", ["capsuleId"])
    assert await stored(capsules_db, cid) == 0


async def test_two_replies_at_once_store_exactly_one(api: httpx.AsyncClient, capsules_db: asyncpg.Connection) -> None:
    _, b, (cid, keyed) = await opened_capsules(api, 2)
    first, second = await asyncio.gather(
        reply(api, b, cid, text="one", emoji="\U0001f60a"), reply(api, b, cid, text="two", emoji="\U0001f622")
    )
    assert sorted([first.status_code, second.status_code]) == [200, 409], (first.text, second.text)
    loser = second if first.status_code == 200 else first
    assert_problem(loser, 409, "REPLY_EXISTS")
    assert await stored(capsules_db, cid) == 1

    # Ten retries of one keyed reply at once: one reply, the same answer ten times.
    key = f"reply-{uuid.uuid4()}"
    answers = await asyncio.gather(*(reply(api, b, keyed, key=key, text="kept", emoji="\U0001f64f") for _ in range(10)))
    assert [r.status_code for r in answers] == [200] * 10, [r.text for r in answers if r.status_code != 200][:2]
    assert len({r.json()["id"] for r in answers}) == 1
    assert await stored(capsules_db, keyed) == 1
    # The same key for another reply: refused; without the key: the capsule already has its reply.
    assert_problem(await reply(api, b, keyed, key=key, text="other", emoji="\U0001f64f"), 409, "IDEMPOTENCY_KEY_REUSED")
    assert_problem(await reply(api, b, keyed, text="kept", emoji="\U0001f64f"), 409, "REPLY_EXISTS")
    assert await stored(capsules_db, keyed) == 1
