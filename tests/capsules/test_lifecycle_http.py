"""A capsule's whole life through the gateway: sealed, edited, ready, opened once, frozen; the
anonymous sender revealed after the delay; themes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from launcher.stack import Stack
from tests.capsules.helpers import assert_problem, at, bearer, eventually, new_user, pair, send, uid

pytestmark = pytest.mark.slow(18)  # scheduled first: see tests/conftest.py


async def inbox(api: httpx.AsyncClient, who: dict[str, Any], **params: Any) -> list[dict[str, Any]]:
    response = await api.get("/v1/capsules", params={"box": "inbox", **params}, headers=bearer(who))
    assert response.status_code == 200, response.text
    return list(response.json().get("capsules", []))


async def summary(api: httpx.AsyncClient, who: dict[str, Any]) -> dict[str, Any]:
    response = await api.get("/v1/capsules:summary", headers=bearer(who))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_sealed_edit_ready_open_once_then_frozen(api: httpx.AsyncClient) -> None:
    a, b, recipient = await pair(api)
    created = await send(api, a, recipient, title="for later", body="the secret", unlocksAt=at(4))
    assert created.status_code == 200, created.text
    capsule = created.json()
    cid = capsule["id"]
    assert capsule["status"] == "CAPSULE_STATUS_SEALED"
    assert capsule["body"] == "the secret" and capsule["senderId"] == uid(a)
    assert capsule["recipientUserId"] == uid(b) and capsule["recipientId"] == recipient

    # B's inbox: sealed, the sender shown, never the body.
    rows = await inbox(api, b)
    assert [r["id"] for r in rows] == [cid]
    assert rows[0]["status"] == "CAPSULE_STATUS_SEALED"
    assert rows[0]["body"] == ""  # the gateway prints every field; empty = withheld
    assert rows[0]["senderId"] == uid(a) and rows[0]["sender"]["username"] == a["user"]["username"]
    assert rows[0]["recipientId"] == ""  # the sender's address book is theirs
    got = await api.get(f"/v1/capsules/{cid}", headers=bearer(b))
    assert got.status_code == 200 and got.json()["body"] == ""
    assert (await summary(api, b))["sealed"] == "1"
    assert await inbox(api, b, status="ready") == []
    assert [r["id"] for r in await inbox(api, b, status="sealed")] == [cid]

    # A edits it while sealed; the unlock time moves with the same bounds.
    edited = await api.patch(
        f"/v1/capsules/{cid}", json={"title": "edited", "body": "the new secret", "unlocksAt": at(3)}, headers=bearer(a)
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["title"] == "edited" and edited.json()["body"] == "the new secret"
    too_soon = await api.patch(f"/v1/capsules/{cid}", json={"unlocksAt": at(-10)}, headers=bearer(a))
    assert_problem(too_soon, 400, "INVALID_FIELDS", ["capsule.unlocksAt"])

    # B cannot open it yet.
    assert_problem(await api.post(f"/v1/capsules/{cid}:open", headers=bearer(b), json={}), 400, "CAPSULE_SEALED")

    # After the unlock time: ready, with its body, for B.
    async def ready() -> dict[str, Any] | None:
        response = await api.get(f"/v1/capsules/{cid}", headers=bearer(b))
        assert response.status_code == 200, response.text
        body = response.json()
        return body if body["status"] == "CAPSULE_STATUS_READY" else None

    seen = await eventually(ready)
    assert seen["body"] == "the new secret" and seen["title"] == "edited"
    assert [r["id"] for r in await inbox(api, b, status="ready")] == [cid]
    counts = await summary(api, b)
    assert counts["ready"] == "1" and counts["sealed"] == "0"

    # Only B opens it, once.
    assert_problem(await api.post(f"/v1/capsules/{cid}:open", headers=bearer(a), json={}), 404, "NOT_FOUND")
    opened = await api.post(f"/v1/capsules/{cid}:open", headers=bearer(b), json={})
    assert opened.status_code == 200, opened.text
    first = opened.json()
    assert first["status"] == "CAPSULE_STATUS_OPENED" and first["openedAt"]
    again = await api.post(f"/v1/capsules/{cid}:open", headers=bearer(b), json={})
    assert again.status_code == 200 and again.json()["openedAt"] == first["openedAt"]
    assert again.json()["updatedAt"] == first["updatedAt"]
    assert (await summary(api, b))["opened"] == "1"
    assert [r["id"] for r in await inbox(api, b, status="opened")] == [cid]

    # A can no longer edit or delete it.
    late = await api.patch(f"/v1/capsules/{cid}", json={"title": "too late"}, headers=bearer(a))
    assert_problem(late, 400, "CAPSULE_NOT_SEALED")
    assert_problem(await api.delete(f"/v1/capsules/{cid}", headers=bearer(a)), 400, "CAPSULE_NOT_SEALED")
    outbox = await api.get("/v1/capsules", params={"box": "outbox"}, headers=bearer(a))
    assert [r["id"] for r in outbox.json()["capsules"]] == [cid]
    assert outbox.json()["capsules"][0]["status"] == "CAPSULE_STATUS_OPENED"


async def test_anonymous_sender_hidden_until_reveal_delay_after_opening(api: httpx.AsyncClient) -> None:
    a, b, recipient = await pair(api)
    created = await send(api, a, recipient, anonymous=True, revealDelaySeconds=2, unlocksAt=at(2))
    assert created.status_code == 200, created.text
    cid = created.json()["id"]
    assert created.json()["anonymous"] is True and created.json()["senderId"] == uid(a)  # the sender sees all

    def hidden(row: dict[str, Any]) -> bool:
        return row["senderHidden"] is True and row["senderId"] == "" and "sender" not in row

    assert hidden((await inbox(api, b))[0])

    async def opened() -> dict[str, Any] | None:
        response = await api.post(f"/v1/capsules/{cid}:open", headers=bearer(b), json={})
        return dict(response.json()) if response.status_code == 200 else None

    first = await eventually(opened)
    assert hidden(first) and first["body"] == "a letter"

    async def revealed() -> dict[str, Any] | None:
        response = await api.get(f"/v1/capsules/{cid}", headers=bearer(b))
        body = response.json()
        return None if body.get("senderHidden") else body

    shown = await eventually(revealed)
    assert shown["senderId"] == uid(a) and shown["sender"]["id"] == uid(a)
    assert (await inbox(api, b))[0]["senderId"] == uid(a)


async def test_anonymous_with_no_delay_is_revealed_at_opening(api: httpx.AsyncClient) -> None:
    a, b, recipient = await pair(api)
    created = await send(api, a, recipient, anonymous=True, revealDelaySeconds=0, unlocksAt=at(2))
    assert created.status_code == 200, created.text
    cid = created.json()["id"]
    assert created.json()["revealDelaySeconds"] == 0

    async def opened() -> dict[str, Any] | None:
        response = await api.post(f"/v1/capsules/{cid}:open", headers=bearer(b), json={})
        return dict(response.json()) if response.status_code == 200 else None

    first = await eventually(opened)
    assert first["senderId"] == uid(a) and not first.get("senderHidden")


async def test_default_reveal_delay_is_six_hours(api: httpx.AsyncClient) -> None:
    a, _, recipient = await pair(api)
    created = await send(api, a, recipient, anonymous=True)
    assert created.status_code == 200 and created.json()["revealDelaySeconds"] == 21600


async def test_sender_deletes_while_sealed(api: httpx.AsyncClient) -> None:
    a, b, recipient = await pair(api)
    cid = (await send(api, a, recipient)).json()["id"]
    assert (await summary(api, b))["sealed"] == "1"
    assert (await api.get(f"/v1/capsules/{cid}", headers=bearer(b))).status_code == 200  # now cached
    assert_problem(await api.delete(f"/v1/capsules/{cid}", headers=bearer(b)), 404, "NOT_FOUND")
    deleted = await api.delete(f"/v1/capsules/{cid}", headers=bearer(a))
    assert deleted.status_code == 200, deleted.text
    for who in (a, b):
        assert_problem(await api.get(f"/v1/capsules/{cid}", headers=bearer(who)), 404, "NOT_FOUND")
    assert await inbox(api, b) == []
    assert (await summary(api, b))["total"] == "0"


async def test_themes_catalog_and_capsule_theme(api: httpx.AsyncClient) -> None:
    listed = await api.get("/v1/themes")
    assert listed.status_code == 200, listed.text
    themes = listed.json()["themes"]
    assert 6 <= len(themes) <= 10 and [t["name"] for t in themes] == sorted(t["name"] for t in themes)
    for theme in themes:
        assert theme["gradientStart"].startswith("#") and len(theme["gradientEnd"]) == 7
    assert any(t.get("premium") for t in themes)
    first_page = await api.get("/v1/themes", params={"pageSize": 3})
    second_page = await api.get("/v1/themes", params={"pageSize": 3, "pageToken": first_page.json()["nextPageToken"]})
    assert [t["id"] for t in first_page.json()["themes"] + second_page.json()["themes"]] == [
        t["id"] for t in themes[:6]
    ]
    one = await api.get(f"/v1/themes/{themes[0]['id']}")
    assert one.status_code == 200 and one.json() == themes[0]
    # The same for everyone: public HTTP caching (SPEC §7), revalidated by ETag.
    for response in (listed, one):
        assert response.headers["cache-control"] == "public, max-age=3600"
    again = await api.get("/v1/themes", headers={"If-None-Match": listed.headers["etag"]})
    assert again.status_code == 304
    assert_problem(await api.get("/v1/themes/01937a00-0000-7000-8000-0000000000ff"), 404, "NOT_FOUND")

    a, b, recipient = await pair(api)
    created = await send(api, a, recipient, themeId=themes[1]["id"])
    assert created.status_code == 200 and created.json()["themeId"] == themes[1]["id"]
    assert (await inbox(api, b))[0]["themeId"] == themes[1]["id"]


async def test_every_capsule_route_needs_a_token(api: httpx.AsyncClient) -> None:
    stranger = await new_user(api)
    assert (await api.get("/v1/capsules", headers=bearer(stranger))).json().get("capsules", []) == []
    for method, path in (
        ("GET", "/v1/capsules"),
        ("GET", "/v1/capsules:summary"),
        ("POST", "/v1/capsules"),
        ("GET", "/v1/capsules/01937a00-0000-7000-8000-000000000001"),
    ):
        response = await api.request(method, path, json={} if method == "POST" else None)
        assert response.status_code == 401, (method, path, response.text)


async def test_serving_instances_announce_a_ready_capsule_once(api: httpx.AsyncClient, stack: Stack) -> None:
    """Both capsules instances run the unlocker: one "capsule ready" event reaches the stream."""
    a, b, recipient = await pair(api)
    cid = (await send(api, a, recipient, unlocksAt=at(2))).json()["id"]
    stream = f"{stack.cache_prefix}capsules:ready"
    client = redis.from_url(stack.redis_url)
    try:

        async def announced() -> list[Any] | None:
            entries: Any = await client.xrange(stream)
            mine = [f for _, f in entries if f[b"capsule_id"].decode() == cid]
            return mine or None

        events = await eventually(announced)
        assert len(events) == 1
        assert events[0][b"recipient_user"].decode() == uid(b) and events[0][b"sender"].decode() == uid(a)
    finally:
        await client.aclose()
