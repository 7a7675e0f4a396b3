"""Countdown shares (SPEC §13) through the gateway: the recipient of a sealed capsule makes public
links; anyone reads them without a token (public caching headers, the per-IP rate limit), never the
body, never an anonymous sender; revoked links are gone."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from launcher.stack import Stack
from services.capsules.shares import MAX_LIVE_SHARES
from tests.capsules.helpers import assert_problem, at, bearer, eventually, new_user, recipient_of, send, uid
from tests.ratelimit.gateways import spawn_gateways
from tests.recipients.helpers import connect

pytestmark = pytest.mark.slow(10)  # scheduled first: see tests/conftest.py

FOREST = "01937a00-0000-7000-8000-000000000004"
SHOWN = {"kind", "unlocksAt", "state", "theme", "senderDisplayName", "anonymous"}


async def named_pair(api: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A (named Ada Lovelace) connected to B, and A's recipient id for B."""
    a = await new_user(api, firstName="Ada", lastName="Lovelace")
    b = await new_user(api)
    await connect(api, a, b)
    return a, b, await recipient_of(api, a, b)


async def sealed(api: httpx.AsyncClient, a: dict[str, Any], to_b: str, **fields: Any) -> str:
    fields = {"title": "the title", "body": "the secret body", "themeId": FOREST, "unlocksAt": at(3600), **fields}
    created = await send(api, a, to_b, **fields)
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def share(api: httpx.AsyncClient, who: dict[str, Any], cid: str, kind: Any = "story", key: str | None = None) -> Any:
    headers = bearer(who)
    if key is not None:
        headers["Idempotency-Key"] = key
    return api.post(f"/v1/capsules/{cid}/shares", json={} if kind is None else {"kind": kind}, headers=headers)


async def shares_of(db: asyncpg.Connection, cid: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM capsule_shares WHERE capsule_id = $1::uuid", cid))


async def test_share_life_public_read_with_caching_headers_then_revoked(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    a, b, to_b = await named_pair(api)
    cid = await sealed(api, a, to_b)
    made = await share(api, b, cid, "story")
    assert made.status_code == 200, made.text
    token = made.json()["token"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token), token
    assert made.json()["capsuleId"] == cid and made.json()["kind"] == "SHARE_KIND_STORY"

    # Public: no Authorization header at all.
    seen = await api.get(f"/v1/shares/{token}")
    assert seen.status_code == 200, seen.text
    body = seen.json()
    assert set(body) == SHOWN, body
    assert body["kind"] == "SHARE_KIND_STORY" and body["state"] == "COUNTDOWN_STATE_COUNTING"
    assert body["senderDisplayName"] == "Ada Lovelace" and body["anonymous"] is False
    assert body["theme"]["id"] == FOREST and body["theme"]["name"] == "Forest"
    capsule = (await api.get(f"/v1/capsules/{cid}", headers=bearer(a))).json()
    assert body["unlocksAt"] == capsule["unlocksAt"]
    for secret in ("the secret body", "the title", cid, uid(a), uid(b), a["user"]["username"]):
        assert secret not in seen.text
    # SPEC §7 caching: public, a minute, a strong ETag that answers 304.
    assert seen.headers["cache-control"] == "public, max-age=60"
    etag = seen.headers["etag"]
    assert etag.startswith('"')
    again = await api.get(f"/v1/shares/{token}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    # A signed-in reader sees the same answer.
    assert (await api.get(f"/v1/shares/{token}", headers=bearer(a))).json() == body

    # Revoked: 404 on the public read and on a second revoke; the row is gone.
    revoked = await api.delete(f"/v1/capsules/{cid}/shares/{token}", headers=bearer(b))
    assert revoked.status_code == 200, revoked.text
    assert_problem(await api.get(f"/v1/shares/{token}"), 404, "NOT_FOUND")
    assert_problem(await api.delete(f"/v1/capsules/{cid}/shares/{token}", headers=bearer(b)), 404, "NOT_FOUND")
    assert await shares_of(capsules_db, cid) == 0
    assert_problem(await api.get("/v1/shares/not-a-token"), 404, "NOT_FOUND")
    assert_problem(await api.get(f"/v1/shares/{'A' * 43}"), 404, "NOT_FOUND")


async def test_after_the_unlock_a_share_says_unlocked_never_the_body(api: httpx.AsyncClient) -> None:
    a, b, to_b = await named_pair(api)
    cid = await sealed(api, a, to_b, unlocksAt=at(3), themeId="")
    token = (await share(api, b, cid, "link")).json()["token"]
    before = (await api.get(f"/v1/shares/{token}")).json()
    assert before["state"] == "COUNTDOWN_STATE_COUNTING" and "theme" not in before

    async def unlocked() -> dict[str, Any] | None:
        seen = (await api.get(f"/v1/shares/{token}")).json()
        return seen if seen["state"] == "COUNTDOWN_STATE_UNLOCKED" else None

    ready = await eventually(unlocked)
    assert ready["unlocksAt"] == before["unlocksAt"] and ready["kind"] == "SHARE_KIND_LINK"
    # Too late to make a new one.
    assert_problem(await share(api, b, cid), 400, "CAPSULE_NOT_SEALED")
    opened = await api.post(f"/v1/capsules/{cid}:open", headers=bearer(b), json={})
    assert opened.status_code == 200, opened.text
    after = await api.get(f"/v1/shares/{token}")
    assert after.json() == ready  # opened looks like ready: a share does not say
    assert "the secret body" not in after.text and "the title" not in after.text


async def test_an_anonymous_capsule_never_shows_its_sender(api: httpx.AsyncClient) -> None:
    a, b, to_b = await named_pair(api)
    cid = await sealed(api, a, to_b, anonymous=True, revealDelaySeconds=0)
    token = (await share(api, b, cid, "video")).json()["token"]
    seen = await api.get(f"/v1/shares/{token}")
    assert seen.status_code == 200
    assert seen.json()["anonymous"] is True and seen.json()["senderDisplayName"] == ""
    for secret in ("Ada", "Lovelace", a["user"]["username"], uid(a), "the secret body"):
        assert secret not in seen.text
    assert "public" in seen.headers["cache-control"] and seen.headers["etag"]


async def test_every_refusal_names_its_reason_and_writes_nothing(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    a, b, to_b = await named_pair(api)
    cid = await sealed(api, a, to_b)
    assert_problem(await share(api, b, cid, None), 400, "INVALID_FIELDS", ["kind"])
    assert_problem(await share(api, b, cid, "banana"), 400, "INVALID_FIELDS", ["kind"])
    assert_problem(await share(api, b, cid, 99), 400, "INVALID_FIELDS", ["kind"])
    assert_problem(await share(api, b, "nope"), 400, "INVALID_FIELDS", ["capsuleId"])
    assert_problem(await share(api, b, str(uuid.uuid4())), 404, "NOT_FOUND")
    assert_problem(await share(api, b, cid, key=""), 400, "INVALID_FIELDS", ["idempotencyKey"])
    assert await shares_of(capsules_db, cid) == 0
    # Every kind is accepted, spelled as SPEC §13 writes it or by its enum name.
    for kind in ("story", "video", "static", "link", "SHARE_KIND_LINK"):
        assert (await share(api, b, cid, kind)).status_code == 200
    assert await shares_of(capsules_db, cid) == 5
    # A token of another capsule, or a malformed one, revokes nothing.
    other = await sealed(api, a, to_b)
    token = (await share(api, b, other)).json()["token"]
    assert_problem(await api.delete(f"/v1/capsules/{cid}/shares/{token}", headers=bearer(b)), 404, "NOT_FOUND")
    assert_problem(await api.delete(f"/v1/capsules/{cid}/shares/x", headers=bearer(b)), 404, "NOT_FOUND")
    assert (await api.get(f"/v1/shares/{token}")).status_code == 200
    # A deleted capsule's shares are gone with it.
    assert (await api.delete(f"/v1/capsules/{other}", headers=bearer(a))).status_code == 200
    assert_problem(await api.get(f"/v1/shares/{token}"), 404, "NOT_FOUND")
    assert_problem(await share(api, b, other), 404, "NOT_FOUND")


async def test_authorization_matrix_stranger_sender_recipient_blocked(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    a, b, to_b = await named_pair(api)
    cid, later = await sealed(api, a, to_b), await sealed(api, a, to_b)
    stranger = await new_user(api)
    assert_problem(await share(api, stranger, cid), 404, "NOT_FOUND")
    assert_problem(await share(api, a, cid), 404, "NOT_FOUND")  # the sender does not share
    assert await shares_of(capsules_db, cid) == 0
    token = (await share(api, b, cid)).json()["token"]
    for who in (stranger, a):  # nor revoke the recipient's share
        assert_problem(await api.delete(f"/v1/capsules/{cid}/shares/{token}", headers=bearer(who)), 404, "NOT_FOUND")
    assert (await api.get(f"/v1/shares/{token}")).status_code == 200

    # The sender blocks the recipient: no new share (answered like a removed connection), the
    # existing one stays until the recipient revokes it.
    assert (await api.post("/v1/blocks", json={"userId": uid(b)}, headers=bearer(a))).status_code == 200
    assert_problem(await share(api, b, later), 400, "NOT_CONNECTED", ["capsuleId"])
    assert await shares_of(capsules_db, later) == 0
    assert (await api.get(f"/v1/shares/{token}")).status_code == 200
    assert (await api.delete(f"/v1/capsules/{cid}/shares/{token}", headers=bearer(b))).status_code == 200

    # The recipient blocking the sender: the same.
    c, d, to_d = await named_pair(api)
    mine = await sealed(api, c, to_d)
    assert (await api.post("/v1/blocks", json={"userId": uid(c)}, headers=bearer(d))).status_code == 200
    assert_problem(await share(api, d, mine), 400, "NOT_CONNECTED", ["capsuleId"])
    assert await shares_of(capsules_db, mine) == 0


async def test_parallel_shares_stop_exactly_at_the_cap_and_keys_replay(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    a, b, to_b = await named_pair(api)
    cid = await sealed(api, a, to_b)
    answers = await asyncio.gather(*(share(api, b, cid) for _ in range(MAX_LIVE_SHARES + 5)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * MAX_LIVE_SHARES + [400] * 5, statuses
    for refused in (r for r in answers if r.status_code != 200):
        assert_problem(refused, 400, "SHARE_LIMIT_REACHED")
    assert await shares_of(capsules_db, cid) == MAX_LIVE_SHARES
    tokens = {r.json()["token"] for r in answers if r.status_code == 200}
    assert len(tokens) == MAX_LIVE_SHARES
    # Revoking one makes room for one.
    assert (await api.delete(f"/v1/capsules/{cid}/shares/{tokens.pop()}", headers=bearer(b))).status_code == 200
    key = f"share-{uuid.uuid4()}"
    keyed = await asyncio.gather(*(share(api, b, cid, "static", key=key) for _ in range(5)))
    assert [r.status_code for r in keyed] == [200] * 5, [r.text for r in keyed]
    assert len({r.json()["token"] for r in keyed}) == 1
    assert_problem(await share(api, b, cid, "video", key=key), 409, "IDEMPOTENCY_KEY_REUSED")
    assert await shares_of(capsules_db, cid) == MAX_LIVE_SHARES


async def test_the_public_read_spends_the_per_ip_budget(api: httpx.AsyncClient, stack: Stack) -> None:
    a, b, to_b = await named_pair(api)
    token = (await share(api, b, await sealed(api, a, to_b))).json()["token"]
    ((url, process),) = spawn_gateways(
        stack, ["shares-rl"], GATEWAY_RATELIMIT_IP="3/3600", GATEWAY_RATELIMIT_USER="1000/3600"
    )
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            answers = [await client.get(f"/v1/shares/{token}") for _ in range(4)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        assert answers[0].headers["ratelimit-limit"] == "3"
        assert_problem(answers[3], 429, "RATE_LIMITED")
    finally:
        process.stop(10)
