"""Shared steps of the notifications tests: events put on the streams by hand (as a producer's
relay or the unlocker would), waiting until the service's consumers took them, and the routes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import redis.asyncio as redis
from redis.exceptions import ResponseError

from launcher.stack import Stack
from services.common import events
from services.notifications.consumers import GROUP
from tests.capsules.helpers import bearer, eventually

LIST = "/v1/notifications"
MARK = "/v1/notifications:markRead"
COUNT = "/v1/notifications:unreadCount"


def envelope(type_: str, **data: str) -> events.Event:
    return events.Event(uuid.uuid4(), type_, datetime.now(UTC), data)


def stream_of(stack: Stack, producer: str) -> str:
    return events.events_stream(stack.cache_prefix, producer)


async def ensure_group(streams: redis.Redis, stream: str) -> None:
    """The group as the service makes it (it may not have got there yet for a new stream)."""
    try:
        await streams.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def drained(streams: redis.Redis, stream: str, entry_id: bytes | str) -> None:
    """Until the group has been delivered everything up to `entry_id` and acked all it was given."""
    target = _id(entry_id)

    async def done() -> bool | None:
        for group in await streams.xinfo_groups(stream):
            caught_up = _id(group["last-delivered-id"]) >= target and int(group["pending"]) == 0
            if _s(group["name"]) == GROUP and caught_up:
                return True
        return None

    await eventually(done, within=15.0)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = _s(value).partition("-")
    return int(ms), int(seq or 0)


async def listed(api: httpx.AsyncClient, user: dict[str, Any], **params: Any) -> dict[str, Any]:
    answer = await api.get(LIST, params=params, headers=bearer(user))
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def all_of(api: httpx.AsyncClient, user: dict[str, Any]) -> list[dict[str, Any]]:
    return list((await listed(api, user, pageSize=100)).get("notifications", []))


async def unread(api: httpx.AsyncClient, user: dict[str, Any]) -> int:
    answer = await api.get(COUNT, headers=bearer(user))
    assert answer.status_code == 200, answer.text
    return int(answer.json().get("unreadCount", 0))


async def mark(api: httpx.AsyncClient, user: dict[str, Any], body: dict[str, Any]) -> httpx.Response:
    return await api.post(MARK, json=body, headers=bearer(user))
