"""The push queries (SPEC §14) are served by their indexes, shown with EXPLAIN on seeded data,
exactly as services/notifications/push/storage.py sends them: the device list and the fan-out of a
notification (devices_user_idx), the sender's claim (push_deliveries_due_idx), a token's pending
deliveries (push_deliveries_token_idx) and the keys."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.notifications.push import storage
from tests.query_plans import no_scan, plan, seeded_database

UID = "lpad(to_hex({}), 32, '0')::uuid"
# 30,000 devices of 15,000 users (two each), 100,000 notifications of those users, and a delivery
# per notification and device: 200,000, of which one in 50 is still pending.
SEED = f"""
    INSERT INTO devices (token, user_id, platform, seq)
    SELECT 'tok-' || i, {UID.format("1 + i % 15000")}, CASE WHEN i % 2 = 0 THEN 'fcm' ELSE 'apns' END,
           gen_random_uuid()
      FROM generate_series(1, 30000) AS i;
    INSERT INTO notifications (id, event_id, user_id, kind, capsule_id, created_at)
    SELECT {UID.format("1000000 + i")}, gen_random_uuid(), {UID.format("1 + i % 15000")}, 'capsule_ready',
           gen_random_uuid(), now() - i * interval '1 second'
      FROM generate_series(1, 100000) AS i;
    INSERT INTO push_deliveries (notification_id, token, state, attempts, next_attempt_at)
    SELECT n.id, d.token, CASE WHEN random() < 0.02 THEN 'pending' ELSE 'delivered' END, 1,
           now() - random() * interval '1 day'
      FROM notifications n JOIN devices d ON d.user_id = n.user_id;
    ANALYZE devices;
    ANALYZE notifications;
    ANALYZE push_deliveries;
"""


@pytest.fixture(scope="module")
async def seeded() -> AsyncIterator[asyncpg.Connection]:
    async with seeded_database("notifications", SEED) as conn:
        yield conn


def user(i: int) -> uuid.UUID:
    return uuid.UUID(int=i)


async def test_the_device_list_and_the_fan_out_use_the_user_index(seeded: asyncpg.Connection) -> None:
    no_scan(
        await plan(seeded, storage.LIST_DEVICES, user_id=user(5), after=storage.MAX_UUID, limit=21), "devices_user_idx"
    )
    no_scan(await plan(seeded, storage.QUEUE, notification_id=uuid.uuid4(), user_id=user(5)), "devices_user_idx")


async def test_the_claim_reads_only_due_pending_rows(seeded: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    claim = await plan(seeded, storage.CLAIM, now=now, batch=100, lease_end=now + timedelta(seconds=60))
    assert "push_deliveries_due_idx" in claim, claim
    no_scan(claim, "devices_pkey", "notifications_pkey")


async def test_a_tokens_rows_are_found_by_key_or_token_index(seeded: asyncpg.Connection) -> None:
    no_scan(await plan(seeded, storage.DROP_PENDING, token="tok-7"), "push_deliveries_token_idx")
    for statement, values in (
        (storage.LOCK_DEVICE, {"token": "tok-7"}),
        (storage.DELETE_OWN_DEVICE, {"token": "tok-7", "user_id": user(8)}),
        (storage.DELETE_DEVICE, {"token": "tok-7"}),
        (storage.TOUCH_DEVICE, {"token": "tok-7", "now": datetime.now(UTC)}),
    ):
        no_scan(await plan(seeded, statement, **values), "devices_pkey")
    key = {"n": user(1000007), "token": "tok-7"}
    for statement in (storage.DELIVERED, storage.GIVE_UP):
        no_scan(await plan(seeded, statement, **key), "push_deliveries_pkey")
    no_scan(await plan(seeded, storage.RESCHEDULE, at=datetime.now(UTC), **key), "push_deliveries_pkey")
