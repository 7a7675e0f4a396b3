"""Shared steps of the capsules tests (through the gateway)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx

from tests.auth.test_auth_http import assert_problem
from tests.recipients.helpers import bearer, connect, new_user, uid

__all__ = [
    "assert_problem",
    "at",
    "bearer",
    "connect",
    "eventually",
    "new_user",
    "pair",
    "recipient_of",
    "send",
    "uid",
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
