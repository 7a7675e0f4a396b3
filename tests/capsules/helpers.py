"""Shared steps of the capsules tests (through the gateway)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import httpx

from tests.auth.test_auth_http import assert_problem
from tests.recipients.helpers import bearer, connect, new_user, uid

__all__ = [
    "assert_problem",
    "at",
    "bearer",
    "claim",
    "connect",
    "connection_ids",
    "eventually",
    "inbox_ids",
    "invite_state",
    "new_user",
    "pair",
    "recipient_of",
    "recipients_of",
    "send",
    "uid",
    "unlinked_recipient",
]

T = TypeVar("T")


def at(seconds: float) -> str:
    """RFC 3339 time `seconds` from now (UTC)."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


async def recipient_of(api: httpx.AsyncClient, owner: dict[str, Any], linked: dict[str, Any]) -> str:
    """The id of `owner`'s recipient linked to `linked` (made when they connected)."""
    listed = await api.get("/v1/recipients", params={"pageSize": 100}, headers=bearer(owner))
    assert listed.status_code == 200, listed.text
    for row in listed.json().get("recipients", []):
        if row.get("linkedUserId") == uid(linked):
            return str(row["id"])
    raise AssertionError("no linked recipient")


async def pair(api: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Two connected users A and B, and A's recipient id for B."""
    a, b = await new_user(api), await new_user(api)
    await connect(api, a, b)
    return a, b, await recipient_of(api, a, b)


async def send(
    api: httpx.AsyncClient, sender: dict[str, Any], recipient_id: str, *, key: str | None = None, **fields: Any
) -> httpx.Response:
    body = {"recipientId": recipient_id, "title": "hello", "body": "a letter", "unlocksAt": at(3600), **fields}
    headers = bearer(sender)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await api.post("/v1/capsules", json=body, headers=headers)


async def eventually(check: Callable[[], Awaitable[T | None]], *, within: float = 15.0, every: float = 0.1) -> T:
    """Poll `check` until it returns something (not None); fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(every)


# --- invites (SPEC §13) ---------------------------------------------------------------------------


async def unlinked_recipient(api: httpx.AsyncClient, owner: dict[str, Any], name: str = "Grandma") -> str:
    made = await api.post("/v1/recipients", json={"name": name}, headers=bearer(owner))
    assert made.status_code == 200, made.text
    return str(made.json()["id"])


async def claim(api: httpx.AsyncClient, token: str, user: dict[str, Any]) -> httpx.Response:
    return await api.post(f"/v1/invites/{token}:claim", headers=bearer(user))


async def inbox_ids(api: httpx.AsyncClient, user: dict[str, Any]) -> list[str]:
    listed = await api.get("/v1/capsules", params={"box": "inbox"}, headers=bearer(user))
    assert listed.status_code == 200, listed.text
    return [c["id"] for c in listed.json().get("capsules", [])]


async def connection_ids(api: httpx.AsyncClient, user: dict[str, Any]) -> list[str]:
    listed = await api.get("/v1/connections", params={"pageSize": 100}, headers=bearer(user))
    assert listed.status_code == 200, listed.text
    return [c["userId"] for c in listed.json().get("connections", [])]


async def recipients_of(api: httpx.AsyncClient, user: dict[str, Any]) -> list[dict[str, Any]]:
    listed = await api.get("/v1/recipients", params={"pageSize": 100}, headers=bearer(user))
    assert listed.status_code == 200, listed.text
    return list(listed.json().get("recipients", []))


async def invite_state(db: asyncpg.Connection, capsule_id: str) -> asyncpg.Record:
    return await db.fetchrow(
        "SELECT i.claimer::text AS claimer, i.claimed_at, c.recipient_user::text AS recipient_user "
        "FROM invites i JOIN capsules c ON c.id = i.capsule_id WHERE i.capsule_id = $1::uuid",
        capsule_id,
    )
