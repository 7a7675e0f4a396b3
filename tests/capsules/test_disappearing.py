"""Disappearing letters (SPEC §13) through the gateway: the clock starts at the first open, the body
is never shown after its time on any read path (even while the eraser cannot reach the row), then
erased in the database with the row kept; every refusal; concurrent opens agree on one clock; the
eraser's batch uses its index on seeded volume.

The session stack lowers the minimum to 1 s (CAPSULE_MIN_DISAPPEAR_SECONDS, tests/conftest.py) so
letters vanish within a test; the production bounds (60..86,400) are checked on the rule itself."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import asyncpg
import httpx
import pytest

from services.capsules import disappearing, storage
from services.capsules.capsules import view
from services.capsules.settings import CapsulesSettings
from services.common.errors import FieldErrors
from tests.capsules.helpers import assert_problem, at, bearer, eventually, new_user, pair, send, uid
from tests.capsules.test_domain_unit import NOW, RECIPIENT, SENDER, row
from tests.capsules.test_query_plans import SEED
from tests.query_plans import no_scan, plan, seeded_database

pytestmark = pytest.mark.slow(12)


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def get(api: httpx.AsyncClient, who: dict[str, Any], cid: str) -> dict[str, Any]:
    response = await api.get(f"/v1/capsules/{cid}", headers=bearer(who))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def listed(api: httpx.AsyncClient, who: dict[str, Any], box: str, cid: str, **params: Any) -> dict[str, Any]:
    response = await api.get("/v1/capsules", params={"box": box, **params}, headers=bearer(who))
    assert response.status_code == 200, response.text
    (found,) = [r for r in response.json().get("capsules", []) if r["id"] == cid]
    return dict(found)


async def every_read(api: httpx.AsyncClient, a: dict[str, Any], b: dict[str, Any], cid: str) -> list[dict[str, Any]]:
    """The capsule through every read path, sender's and recipient's, each twice (the second read
    comes from the caches the first one warmed: the Redis row, the kept inbox/outbox pages)."""
    seen = []
    for _ in range(2):
        seen += [await get(api, a, cid), await get(api, b, cid)]
        seen += [await listed(api, b, "inbox", cid), await listed(api, a, "outbox", cid)]
        seen += [
            await listed(api, b, "inbox", cid, status="opened"),
            await listed(api, a, "outbox", cid, status="opened"),
        ]
    return seen


async def open_(api: httpx.AsyncClient, who: dict[str, Any], cid: str) -> httpx.Response:
    return await api.post(f"/v1/capsules/{cid}:open", headers=bearer(who), json={})


async def ready(api: httpx.AsyncClient, who: dict[str, Any], cid: str) -> None:
    async def check() -> bool | None:
        return True if (await get(api, who, cid))["status"] == "CAPSULE_STATUS_READY" else None

    await eventually(check)


# --- the whole life ----------------------------------------------------------------------------------


async def test_body_vanishes_after_its_time_on_every_read_then_is_erased(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    a, b, to_b = await pair(api)
    created = await send(api, a, to_b, body="read me fast", unlocksAt=at(1.2), disappearAfterOpenSeconds=5)
    assert created.status_code == 200, created.text
    capsule = created.json()
    cid = capsule["id"]
    assert capsule["disappearAfterOpenSeconds"] == 5 and capsule["disappeared"] is False
    assert not capsule.get("disappearsAt")  # the clock has not started: nobody opened it
    await ready(api, b, cid)
    # Not opened: ready, the body there, no clock yet.
    before = await get(api, b, cid)
    assert before["body"] == "read me fast" and not before.get("disappearsAt") and before["disappeared"] is False

    opened = await open_(api, b, cid)
    assert opened.status_code == 200, opened.text
    first = opened.json()
    disappears_at = stamp(first["disappearsAt"])
    assert disappears_at == stamp(first["openedAt"]) + timedelta(seconds=5)
    assert first["body"] == "read me fast" and first["disappeared"] is False
    # Before its time, every read path shows the body (and warms its cache).
    for seen in await every_read(api, a, b, cid):
        assert seen["body"] == "read me fast" and seen["disappeared"] is False, seen
        assert stamp(seen["disappearsAt"]) == disappears_at

    # Keep the eraser off the row (SKIP LOCKED passes it by): whatever its lag, reads must hide
    # the body by themselves once its time has come, cached copies included.
    async with capsules_db.transaction():
        held = await capsules_db.fetchrow("SELECT body FROM capsules WHERE id = $1 FOR UPDATE", uuid.UUID(cid))
        assert held is not None and held["body"] == "read me fast"

        async def vanished() -> bool | None:
            return True if (await get(api, b, cid))["disappeared"] else None

        await eventually(vanished)
        assert datetime.now(UTC) >= disappears_at
        for seen in await every_read(api, a, b, cid):
            assert seen["body"] == "" and seen["disappeared"] is True, seen
            assert stamp(seen["disappearsAt"]) == disappears_at
        # Hidden, not yet erased: the read path alone kept it from being shown.
        assert await capsules_db.fetchval("SELECT body FROM capsules WHERE id = $1", uuid.UUID(cid)) == "read me fast"

    # Released: the eraser erases it for good; the row stays.
    async def erased() -> asyncpg.Record | None:
        found = await capsules_db.fetchrow(
            "SELECT body, disappeared_at, opened_at, title FROM capsules WHERE id = $1", uuid.UUID(cid)
        )
        assert found is not None
        return found if found["disappeared_at"] is not None else None

    stored = await eventually(erased)
    assert stored["body"] is None and stored["title"] == "hello" and stored["disappeared_at"] >= disappears_at
    for seen in await every_read(api, a, b, cid):
        assert seen["body"] == "" and seen["disappeared"] is True and seen["status"] == "CAPSULE_STATUS_OPENED", seen
    # Opening again changes nothing and shows nothing.
    again = await open_(api, b, cid)
    assert again.status_code == 200, again.text
    assert again.json()["body"] == "" and again.json()["disappeared"] is True
    assert again.json()["openedAt"] == first["openedAt"] and again.json()["disappearsAt"] == first["disappearsAt"]


async def test_a_letter_without_the_field_never_disappears(api: httpx.AsyncClient) -> None:
    a, b, to_b = await pair(api)
    created = await send(api, a, to_b, body="kept forever", unlocksAt=at(1.2))
    assert created.status_code == 200, created.text
    cid = created.json()["id"]
    assert created.json().get("disappearAfterOpenSeconds") is None
    await ready(api, b, cid)
    opened = (await open_(api, b, cid)).json()
    assert opened["body"] == "kept forever" and opened["disappeared"] is False and not opened.get("disappearsAt")


# --- refusals and who may see it -------------------------------------------------------------------


async def test_out_of_range_values_are_refused_and_write_nothing(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    a, b, to_b = await pair(api)
    for value in (0, -1, 86_401, 2**31 - 1):
        refused = await send(api, a, to_b, disappearAfterOpenSeconds=value)
        assert_problem(refused, 400, "INVALID_FIELDS", ["disappearAfterOpenSeconds"])
    wrong_type = await send(api, a, to_b, disappearAfterOpenSeconds="soon")
    assert wrong_type.status_code == 400, wrong_type.text
    assert await capsules_db.fetchval("SELECT count(*) FROM capsules WHERE sender = $1", uuid.UUID(uid(a))) == 0

    # Fixed at send time: the sender cannot change it afterwards.
    kept = await send(api, a, to_b, disappearAfterOpenSeconds=86_400)
    assert kept.status_code == 200, kept.text
    cid = kept.json()["id"]
    for patch in ({"disappearAfterOpenSeconds": 60}, {"disappeared": True}, {"disappearsAt": at(60)}):
        response = await api.patch(f"/v1/capsules/{cid}", json=patch, headers=bearer(a))
        assert_problem(response, 400, "INVALID_FIELDS", ["updateMask"])
    assert (
        await capsules_db.fetchval("SELECT disappear_after_seconds FROM capsules WHERE id = $1", uuid.UUID(cid))
        == 86_400
    )

    # A retry with the same key returns the first capsule; the same key with another lifetime is refused.
    key = f"disappear-{uuid.uuid4()}"
    fields = {"unlocksAt": at(3600), "disappearAfterOpenSeconds": 120}
    first, retry = await send(api, a, to_b, key=key, **fields), await send(api, a, to_b, key=key, **fields)
    assert first.status_code == retry.status_code == 200 and first.json()["id"] == retry.json()["id"]
    other = await send(api, a, to_b, key=key, **{**fields, "disappearAfterOpenSeconds": 121})
    assert_problem(other, 409, "IDEMPOTENCY_KEY_REUSED", ["idempotencyKey"])
    assert await capsules_db.fetchval("SELECT count(*) FROM capsules WHERE sender = $1", uuid.UUID(uid(a))) == 2

    # A block: answered like "not connected", nothing written.
    assert (await api.post("/v1/blocks", json={"userId": uid(a)}, headers=bearer(b))).status_code == 200
    blocked = await send(api, a, to_b, disappearAfterOpenSeconds=60)
    assert_problem(blocked, 400, "NOT_CONNECTED", ["recipientId"])
    assert await capsules_db.fetchval("SELECT count(*) FROM capsules WHERE sender = $1", uuid.UUID(uid(a))) == 2


async def test_only_the_recipient_starts_the_clock_and_strangers_see_nothing(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    a, b, to_b = await pair(api)
    stranger = await new_user(api)
    created = await send(api, a, to_b, unlocksAt=at(1.2), disappearAfterOpenSeconds=60)
    cid = created.json()["id"]
    await ready(api, b, cid)
    assert_problem(await open_(api, a, cid), 404, "NOT_FOUND")
    assert_problem(await open_(api, stranger, cid), 404, "NOT_FOUND")
    assert_problem(await api.get(f"/v1/capsules/{cid}", headers=bearer(stranger)), 404, "NOT_FOUND")
    clock = await capsules_db.fetchrow("SELECT opened_at, disappears_at FROM capsules WHERE id = $1", uuid.UUID(cid))
    assert clock is not None and clock["opened_at"] is None and clock["disappears_at"] is None


# --- the race --------------------------------------------------------------------------------------


async def test_concurrent_opens_start_one_clock_and_the_body_is_erased_once(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    a, b, to_b = await pair(api)
    created = await send(api, a, to_b, body="one clock", unlocksAt=at(1.2), disappearAfterOpenSeconds=2)
    cid = created.json()["id"]
    await ready(api, b, cid)

    responses = await asyncio.gather(*(open_(api, b, cid) for _ in range(8)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert len({r.json()["openedAt"] for r in responses}) == 1
    assert len({r.json()["disappearsAt"] for r in responses}) == 1
    stored = await capsules_db.fetchrow("SELECT opened_at, disappears_at FROM capsules WHERE id = $1", uuid.UUID(cid))
    assert stored is not None and stored["disappears_at"] == stored["opened_at"] + timedelta(seconds=2)
    assert stamp(responses[0].json()["openedAt"]) == stored["opened_at"]

    async def erased() -> datetime | None:
        return await capsules_db.fetchval("SELECT disappeared_at FROM capsules WHERE id = $1", uuid.UUID(cid))

    erased_at = await eventually(erased)
    # Opens racing the erased row: the same clock, no body, and the erasure is not redone.
    late = await asyncio.gather(*(open_(api, b, cid) for _ in range(4)), get(api, a, cid))
    for response in late[:-1]:
        assert isinstance(response, httpx.Response) and response.status_code == 200, response
        assert response.json()["body"] == "" and response.json()["disappeared"] is True
        assert response.json()["openedAt"] == responses[0].json()["openedAt"]
    final = await capsules_db.fetchrow(
        "SELECT body, disappeared_at, opened_at FROM capsules WHERE id = $1", uuid.UUID(cid)
    )
    assert final is not None and final["body"] is None and final["disappeared_at"] == erased_at
    assert final["opened_at"] == stored["opened_at"]
    for seen in await every_read(api, a, b, cid):
        assert seen["body"] == "" and seen["disappeared"] is True, seen


# --- the rule and the setting, at production's bounds (no mesh) ------------------------------------


def test_production_bounds_are_60_to_86400_seconds() -> None:
    for value, ok in ((None, True), (59, False), (60, True), (86_400, True), (86_401, False), (0, False)):
        errors = FieldErrors()
        disappearing.after_open_seconds(errors, value)
        assert (not errors) == ok, value
        if not ok:
            assert [f for f, _ in errors.violations] == ["disappear_after_open_seconds"]
    with mock.patch.dict(os.environ, {}, clear=False):
        os.environ.pop("CAPSULE_MIN_DISAPPEAR_SECONDS", None)
        assert CapsulesSettings.from_env().min_disappear_seconds == 60
    for lowered, allowed in (("1", True), ("60", True), ("0", False), ("61", False)):
        with mock.patch.dict(os.environ, {"CAPSULE_MIN_DISAPPEAR_SECONDS": lowered}):
            if allowed:
                assert CapsulesSettings.from_env().min_disappear_seconds == int(lowered)
            else:
                with pytest.raises(ValueError):
                    CapsulesSettings.from_env()


def test_view_hides_the_body_at_its_time_for_sender_and_recipient() -> None:
    opened = NOW - timedelta(seconds=30)
    due = row(
        unlocks_at=NOW - timedelta(hours=1),
        opened_at=opened,
        disappear_after_seconds=60,
        disappears_at=opened + timedelta(seconds=60),
    )
    for caller in (SENDER, RECIPIENT):
        assert view(due, caller, NOW).body_visible and not view(due, caller, NOW).disappeared
        later = view(due, caller, opened + timedelta(seconds=60))
        assert not later.body_visible and later.disappeared
    # Erased by an instance whose clock runs ahead: gone here too, whatever this clock says.
    erased = row(unlocks_at=NOW - timedelta(hours=1), opened_at=opened, body=None, disappeared_at=NOW)
    assert view(erased, RECIPIENT, opened).disappeared and not view(erased, RECIPIENT, opened).body_visible


# --- the eraser's query on seeded volume -----------------------------------------------------------


@pytest.fixture(scope="module")
async def seeded() -> AsyncIterator[asyncpg.Connection]:
    async with seeded_database("capsules", SEED) as conn:
        yield conn


async def test_eraser_batch_uses_its_partial_index(seeded: asyncpg.Connection) -> None:
    assert await seeded.fetchval("SELECT count(*) FROM capsules WHERE disappeared_at IS NOT NULL") > 1000
    # A backlog of due bodies, more than a batch.
    assert (
        await seeded.fetchval("SELECT count(*) FROM capsules WHERE disappears_at <= now() AND body IS NOT NULL") > 100
    )
    text = await plan(seeded, storage.ERASE_DUE, now=datetime.now(UTC), limit=100)
    no_scan(text, "capsules_disappear_idx", "LockRows", "capsules_pkey")
