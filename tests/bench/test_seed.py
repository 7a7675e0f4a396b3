"""The bench's seed (bench/seed.py) at a small scale, into scratch databases migrated by each
service's own migrations: the shape SPEC §11's volume must have (and side-by-side's seed has),
checked across the three databases."""

from __future__ import annotations

import hashlib
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import pytest
from argon2 import PasswordHasher

from bench.seed import SEED_PASSWORD, Volume, seed_auth, seed_capsules, seed_recipients
from tests.query_plans import scratch_database

VOLUME = Volume(users=150)


def seed_mesh_user_id(i: int) -> uuid.UUID:
    """User pf<i>'s id as SPEC §11's side-by-side benchmark seeds it (pg_temp.id7('user:' || i, i))."""
    digest = hashlib.md5(f"user:{i}".encode()).hexdigest()
    return uuid.UUID(f"{1735689600000 + i:012x}7{digest[:3]}8{digest[3:18]}")


@pytest.fixture(scope="module")
async def seeded():
    now = datetime.now(UTC)
    async with AsyncExitStack() as stack:
        auth = await stack.enter_async_context(scratch_database("auth"))
        recipients = await stack.enter_async_context(scratch_database("recipients"))
        capsules = await stack.enter_async_context(scratch_database("capsules"))
        assert await seed_auth(auth, VOLUME, now)
        assert await seed_recipients(recipients, VOLUME, now)
        assert await seed_capsules(capsules, VOLUME, now)
        yield {
            "now": now,
            "auth": auth,
            "users": await auth.fetch("SELECT id, username, email, password_hash FROM users"),
            "connections": await recipients.fetch("SELECT id, user_low, user_high FROM connections"),
            "recipients": await recipients.fetch("SELECT id, owner, linked_user, email FROM recipients"),
            "capsules": await capsules.fetch(
                "SELECT id, sender, recipient_id, recipient_user, unlocks_at, opened_at, anonymous,"
                " unlocked_event_at FROM capsules"
            ),
            "again": [
                await seed_auth(auth, VOLUME, now),
                await seed_recipients(recipients, VOLUME, now),
                await seed_capsules(capsules, VOLUME, now),
            ],
        }


async def test_counts_follow_the_number_of_users(seeded) -> None:
    assert len(seeded["users"]) == VOLUME.users
    assert len(seeded["connections"]) == 5 * VOLUME.users == VOLUME.connections
    assert len(seeded["recipients"]) == 10 * VOLUME.users == VOLUME.recipients
    assert len(seeded["capsules"]) == 20 * VOLUME.users == VOLUME.capsules


async def test_a_second_seed_writes_nothing(seeded) -> None:
    assert seeded["again"] == [False, False, False]


async def test_users_are_pf_i_with_the_seed_password_and_seed_mesh_ids(seeded) -> None:
    by_name = {row["username"]: row for row in seeded["users"]}
    assert set(by_name) == {f"pf{i}" for i in range(1, VOLUME.users + 1)}
    assert by_name["pf7"]["email"] == "pf7@perf.example"
    assert by_name["pf1"]["id"] == seed_mesh_user_id(1)
    assert by_name[f"pf{VOLUME.users}"]["id"] == seed_mesh_user_id(VOLUME.users)
    assert PasswordHasher().verify(by_name["pf1"]["password_hash"], SEED_PASSWORD)


async def test_every_user_has_ten_connections_each_with_two_linked_recipients(seeded) -> None:
    users = {row["id"] for row in seeded["users"]}
    degree: dict[uuid.UUID, int] = {}
    for c in seeded["connections"]:
        assert c["user_low"] < c["user_high"]
        for end in (c["user_low"], c["user_high"]):
            degree[end] = degree.get(end, 0) + 1
    assert set(degree) == users
    assert set(degree.values()) == {10}

    sides = {(r["owner"], r["linked_user"]) for r in seeded["recipients"]}
    assert all(r["email"] is None for r in seeded["recipients"])
    assert len(sides) == len(seeded["recipients"])
    for c in seeded["connections"]:
        assert (c["user_low"], c["user_high"]) in sides
        assert (c["user_high"], c["user_low"]) in sides


async def test_every_capsule_goes_through_the_senders_recipient_row_to_a_connection(seeded) -> None:
    recipients = {r["id"]: r for r in seeded["recipients"]}
    pairs = {(c["user_low"], c["user_high"]) for c in seeded["connections"]}
    for capsule in seeded["capsules"]:
        row = recipients[capsule["recipient_id"]]
        assert row["linked_user"] == capsule["recipient_user"]
        assert row["owner"] == capsule["sender"]
        low, high = sorted((capsule["sender"], capsule["recipient_user"]))
        assert (low, high) in pairs


async def test_status_mix_and_unlocker_marks(seeded) -> None:
    now, capsules = seeded["now"], seeded["capsules"]
    total = len(capsules)
    sealed = sum(c["unlocks_at"] > now for c in capsules) / total
    opened = sum(c["opened_at"] is not None for c in capsules) / total
    ready = 1 - sealed - opened
    anonymous = sum(c["anonymous"] for c in capsules) / total
    assert sealed == pytest.approx(0.40, abs=0.04)
    assert ready == pytest.approx(0.30, abs=0.04)
    assert opened == pytest.approx(0.30, abs=0.04)
    assert anonymous == pytest.approx(0.03, abs=0.015)
    for c in capsules:
        due = c["unlocks_at"] <= now
        assert (c["unlocked_event_at"] is not None) == due
        if c["opened_at"] is not None:
            assert c["unlocks_at"] <= c["opened_at"] <= now


async def test_receivers_are_skewed_towards_low_numbers(seeded) -> None:
    ids = {row["id"]: int(row["username"][2:]) for row in seeded["users"]}
    inbox: dict[int, int] = {}
    for c in seeded["capsules"]:
        inbox[ids[c["recipient_user"]]] = inbox.get(ids[c["recipient_user"]], 0) + 1
    low = sum(n for i, n in inbox.items() if i <= VOLUME.users // 10)
    # r ≤ N/10 ⇔ u^1.5 ≤ 0.1 ⇔ u ≤ 0.1^(2/3) ≈ 0.215: a fifth of the letters for a tenth of the users.
    assert low / len(seeded["capsules"]) == pytest.approx(0.215, abs=0.04)


async def test_ids_are_uuid7(seeded) -> None:
    for table in ("users", "connections", "recipients", "capsules"):
        for row in seeded[table]:
            assert isinstance(row["id"], uuid.UUID)
            assert row["id"].version == 7, (table, row["id"])
            assert row["id"].variant == uuid.RFC_4122
