"""Device tokens (SPEC §14) through the gateway: registering (idempotent; a token moves to whoever
registers it last), removing one's own only, the list, every refusal with no row written, and two
users registering one token at once."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import asyncpg
import httpx
import pytest

from tests.capsules.helpers import assert_problem, bearer, new_user, uid

DEVICES = "/v1/devices"


def apns_token() -> str:
    return secrets.token_hex(32)


def fcm_token() -> str:
    # The shape FCM gives out: an instance id, a colon, a long URL-safe part.
    return f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(120)}"


def at_token(token: str) -> str:
    """The route of a token: a colon in a path value is sent as %3A (a bare one starts a custom verb)."""
    return f"{DEVICES}/{token.replace(':', '%3A')}"


async def register(api: httpx.AsyncClient, user: dict[str, Any], token: str, platform: str) -> httpx.Response:
    return await api.put(at_token(token), json={"platform": platform}, headers=bearer(user))


async def listed(api: httpx.AsyncClient, user: dict[str, Any]) -> list[dict[str, Any]]:
    answer = await api.get(DEVICES, params={"pageSize": 100}, headers=bearer(user))
    assert answer.status_code == 200, answer.text
    return list(answer.json().get("devices", []))


async def owner(db: asyncpg.Connection, token: str) -> str | None:
    value = await db.fetchval("SELECT user_id FROM devices WHERE token = $1", token)
    return str(value) if value else None


async def test_a_device_is_registered_listed_and_removed(api: httpx.AsyncClient) -> None:
    a = await new_user(api)
    ios, android = apns_token(), fcm_token()
    first = await register(api, a, ios, "apns")
    assert first.status_code == 200, first.text
    assert first.json()["token"] == ios and first.json()["platform"] == "DEVICE_PLATFORM_APNS"
    assert "lastSuccessAt" not in first.json()
    assert (await register(api, a, android, "DEVICE_PLATFORM_FCM")).status_code == 200
    assert [d["token"] for d in await listed(api, a)] == [android, ios]  # newest first

    # The same again changes nothing: same answer, still two devices.
    again = await register(api, a, ios, "apns")
    assert again.json() == first.json()
    assert len(await listed(api, a)) == 2

    removed = await api.delete(at_token(ios), headers=bearer(a))
    assert removed.status_code == 200, removed.text
    assert [d["token"] for d in await listed(api, a)] == [android]
    assert_problem(await api.delete(at_token(ios), headers=bearer(a)), 404, "NOT_FOUND", ["token"])


async def test_the_list_pages_with_signed_tokens(api: httpx.AsyncClient) -> None:
    a, b = await new_user(api), await new_user(api)
    tokens = [fcm_token() for _ in range(5)]
    for token in tokens:
        assert (await register(api, a, token, "fcm")).status_code == 200
    seen: list[str] = []
    page_token = ""
    while True:
        params: dict[str, Any] = {"pageSize": 2, **({"pageToken": page_token} if page_token else {})}
        answer = (await api.get(DEVICES, params=params, headers=bearer(a))).json()
        seen += [d["token"] for d in answer.get("devices", [])]
        page_token = answer.get("nextPageToken", "")
        if not page_token:
            break
        # Another caller cannot use a's cursor.
        theirs = await api.get(DEVICES, params={"pageToken": page_token}, headers=bearer(b))
        assert_problem(theirs, 400, "MALFORMED_PAGE_TOKEN")
    assert seen == tokens[::-1]


async def test_a_token_registered_by_another_user_moves_to_the_caller(
    api: httpx.AsyncClient, notifications_db: asyncpg.Connection
) -> None:
    a, b = await new_user(api), await new_user(api)
    token = apns_token()
    assert (await register(api, a, token, "apns")).status_code == 200
    # b cannot remove a's token: NOT_FOUND, like a token nobody has, and it stays a's.
    assert_problem(await api.delete(at_token(token), headers=bearer(b)), 404, "NOT_FOUND", ["token"])
    assert await owner(notifications_db, token) == uid(a)

    # The phone changes hands: b registers it, and it is b's alone.
    assert (await register(api, b, token, "apns")).status_code == 200
    assert await owner(notifications_db, token) == uid(b)
    assert await listed(api, a) == []
    assert [d["token"] for d in await listed(api, b)] == [token]
    assert_problem(await api.delete(at_token(token), headers=bearer(a)), 404, "NOT_FOUND", ["token"])


async def test_two_users_registering_one_token_at_once_leave_one_owner(
    api: httpx.AsyncClient, notifications_db: asyncpg.Connection
) -> None:
    users = [await new_user(api) for _ in range(4)]
    token = fcm_token()
    answers = await asyncio.gather(*(register(api, user, token, "fcm") for user in users))
    assert [a.status_code for a in answers] == [200] * 4
    assert await notifications_db.fetchval("SELECT count(*) FROM devices WHERE token = $1", token) == 1
    holder = await owner(notifications_db, token)
    assert holder in {uid(u) for u in users}
    lists = [await listed(api, user) for user in users]
    assert sorted(len(one) for one in lists) == [0, 0, 0, 1]


@pytest.mark.parametrize(
    ("token", "body", "fields"),
    [
        ("ab" * 31, {"platform": "apns"}, ["token"]),  # 62 hex: too short
        ("zz" * 32, {"platform": "apns"}, ["token"]),  # not hex
        ("a" * 4097, {"platform": "fcm"}, ["token"]),  # longer than FCM's 4 KB
        ("abc%20def", {"platform": "fcm"}, ["token"]),  # a space
        ("abc%00def", {"platform": "fcm"}, ["token"]),  # NUL never reaches SQL
        ("abc", {}, ["platform"]),
        ("abc", {"platform": "DEVICE_PLATFORM_UNSPECIFIED"}, ["platform"]),
    ],
)
async def test_refusals_name_the_field_and_write_nothing(
    api: httpx.AsyncClient, notifications_db: asyncpg.Connection, token: str, body: dict[str, Any], fields: list[str]
) -> None:
    a = await new_user(api)
    answer = await api.put(at_token(token), json=body, headers=bearer(a))
    assert_problem(answer, 400, "INVALID_FIELDS", fields)
    assert await notifications_db.fetchval("SELECT count(*) FROM devices WHERE user_id = $1::uuid", uid(a)) == 0


async def test_unknown_platforms_and_anonymous_callers_are_refused(api: httpx.AsyncClient) -> None:
    a = await new_user(api)
    answer = await api.put(at_token(fcm_token()), json={"platform": "webpush"}, headers=bearer(a))
    assert answer.status_code == 400, answer.text
    assert (await api.put(at_token(fcm_token()), json={"platform": "fcm"})).status_code == 401
    assert (await api.get(DEVICES)).status_code == 401
    assert (await api.delete(at_token(fcm_token()))).status_code == 401
