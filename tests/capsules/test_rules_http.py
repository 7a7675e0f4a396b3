"""Who may send to whom and with what, through the gateway: each refusal is the precise error of
SPEC §3 and writes nothing; who may see or touch a capsule (anyone else: 404 on every route)."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from tests.capsules.helpers import assert_problem, at, bearer, connect, new_user, pair, recipient_of, send, uid

MISSING_THEME = "01937a00-0000-7000-8000-0000000000ff"


async def rows_of(db: asyncpg.Connection, sender: dict[str, Any]) -> int:
    return int(await db.fetchval("SELECT count(*) FROM capsules WHERE sender = $1::uuid", uid(sender)))


async def test_each_refused_send_writes_nothing(api: httpx.AsyncClient, capsules_db: asyncpg.Connection) -> None:
    a, b, to_b = await pair(api)

    # A recipient that is not linked to a user.
    plain = await api.post("/v1/recipients", json={"name": "Grandma", "email": "gran@example.com"}, headers=bearer(a))
    assert plain.status_code == 200, plain.text
    # A connection that ended: the linked recipient stays, sending is refused.
    d = await new_user(api)
    await connect(api, a, d)
    to_d = await recipient_of(api, a, d)
    assert (await api.delete(f"/v1/connections/{uid(d)}", headers=bearer(a))).status_code == 200
    # A block (by the other side): answered exactly like "not connected".
    e = await new_user(api)
    await connect(api, a, e)
    to_e = await recipient_of(api, a, e)
    assert (await api.post("/v1/blocks", json={"userId": uid(a)}, headers=bearer(e))).status_code == 200
    # A block by the sender.
    f = await new_user(api)
    await connect(api, a, f)
    to_f = await recipient_of(api, a, f)
    assert (await api.post("/v1/blocks", json={"userId": uid(f)}, headers=bearer(a))).status_code == 200
    # Someone else's recipient.
    b_to_a = await recipient_of(api, b, a)

    cases: list[tuple[dict[str, Any], int, str, list[str]]] = [
        ({"recipientId": to_d}, 400, "NOT_CONNECTED", ["recipientId"]),
        ({"recipientId": to_e}, 400, "NOT_CONNECTED", ["recipientId"]),
        ({"recipientId": to_f}, 400, "NOT_CONNECTED", ["recipientId"]),
        ({"recipientId": b_to_a}, 404, "NOT_FOUND", ["recipientId"]),
        ({"recipientId": "01937a00-0000-7000-8000-00000000abcd"}, 404, "NOT_FOUND", ["recipientId"]),
        ({"recipientId": "not-a-uuid"}, 400, "INVALID_FIELDS", ["recipientId"]),
        ({"themeId": MISSING_THEME}, 400, "INVALID_FIELDS", ["themeId"]),
        ({"themeId": "blue"}, 400, "INVALID_FIELDS", ["themeId"]),
        ({"unlocksAt": at(-60)}, 400, "INVALID_FIELDS", ["unlocksAt"]),
        ({"unlocksAt": at(51 * 366 * 86400)}, 400, "INVALID_FIELDS", ["unlocksAt"]),
        ({"unlocksAt": None}, 400, "INVALID_FIELDS", ["unlocksAt"]),
        ({"body": ""}, 400, "INVALID_FIELDS", ["body"]),
        ({"body": "   \n "}, 400, "INVALID_FIELDS", ["body"]),
        ({"body": "x" * 20_001}, 400, "INVALID_FIELDS", ["body"]),
        ({"title": "t" * 201}, 400, "INVALID_FIELDS", ["title"]),
        ({"revealDelaySeconds": 259_201}, 400, "INVALID_FIELDS", ["revealDelaySeconds"]),
        ({"revealDelaySeconds": -1}, 400, "INVALID_FIELDS", ["revealDelaySeconds"]),
    ]
    for fields, status, reason, named in cases:
        body = {"recipientId": to_b, "title": "hello", "body": "a letter", "unlocksAt": at(3600), **fields}
        body = {k: v for k, v in body.items() if v is not None}
        response = await api.post("/v1/capsules", json=body, headers=bearer(a))
        assert_problem(response, status, reason, named)
        assert await rows_of(capsules_db, a) == 0, fields
    # Blocking is never revealed: the blocked side reads the same answer as "not connected".
    blocked = await send(api, a, to_e)
    not_connected = await send(api, a, to_d)
    assert blocked.json()["detail"] == not_connected.json()["detail"]

    # At the bounds: accepted.
    assert (
        await send(api, a, to_b, body="x" * 20_000, title="t" * 200, unlocksAt=at(49 * 365 * 86400))
    ).status_code == 200
    assert await rows_of(capsules_db, a) == 1


async def test_a_stranger_gets_404_on_every_capsule_route(api: httpx.AsyncClient) -> None:
    a, b, to_b = await pair(api)
    c = await new_user(api)
    cid = (await send(api, a, to_b, unlocksAt=at(2))).json()["id"]
    routes = [
        ("GET", f"/v1/capsules/{cid}", None),
        ("PATCH", f"/v1/capsules/{cid}", {"title": "mine now"}),
        ("DELETE", f"/v1/capsules/{cid}", None),
        ("POST", f"/v1/capsules/{cid}:open", {}),
    ]
    for method, path, body in routes:
        assert_problem(await api.request(method, path, json=body, headers=bearer(c)), 404, "NOT_FOUND")
    # The recipient may read and open, never edit or delete.
    assert_problem(await api.patch(f"/v1/capsules/{cid}", json={"title": "x"}, headers=bearer(b)), 404, "NOT_FOUND")
    assert_problem(await api.delete(f"/v1/capsules/{cid}", headers=bearer(b)), 404, "NOT_FOUND")
    # C's lists and summary know nothing of it.
    for box in ("inbox", "outbox"):
        listed = await api.get("/v1/capsules", params={"box": box}, headers=bearer(c))
        assert listed.json()["capsules"] == []
    assert (await api.get("/v1/capsules:summary", headers=bearer(c))).json()["total"] == "0"
    # Still 404 for C once it is ready, and after B opened it.
    assert_problem(await api.get("/v1/capsules/not-a-uuid", headers=bearer(c)), 400, "INVALID_FIELDS", ["id"])


async def test_edit_validation_and_mask(api: httpx.AsyncClient) -> None:
    a, _, to_b = await pair(api)
    cid = (await send(api, a, to_b)).json()["id"]
    bad = await api.patch(f"/v1/capsules/{cid}", json={"body": "x" * 20_001}, headers=bearer(a))
    assert_problem(bad, 400, "INVALID_FIELDS", ["capsule.body"])
    theme = await api.patch(f"/v1/capsules/{cid}", json={"themeId": MISSING_THEME}, headers=bearer(a))
    assert_problem(theme, 400, "INVALID_FIELDS", ["capsule.themeId"])
    fixed = await api.patch(
        f"/v1/capsules/{cid}", params={"updateMask": "anonymous"}, json={"anonymous": True}, headers=bearer(a)
    )
    assert_problem(fixed, 400, "INVALID_FIELDS", ["updateMask"])
    cleared = await api.patch(
        f"/v1/capsules/{cid}", params={"updateMask": "title"}, json={"title": ""}, headers=bearer(a)
    )
    assert cleared.status_code == 200 and cleared.json()["title"] == ""
