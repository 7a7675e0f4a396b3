"""The look-ups of LinkInvitedUser (SPEC §13) are served by their indexes, shown with EXPLAIN on
seeded data (see SEED), each statement exactly as services/recipients/storage.py sends it: the
repeat check by invite (invite_links' primary key), the sender's recipient linked to the claimer
(recipients_owner_linked_user_key) and the link of the invited entry (recipients' primary key)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.recipients import storage
from tests.query_plans import no_scan, plan, seeded_database


def user(i: int) -> uuid.UUID:
    return uuid.UUID(int=i)


UID = "lpad(to_hex({}), 32, '0')::uuid"
# 100,000 claimed invites among 10,000 users, and 200,000 recipients, one in two linked (owners
# 1..10,000, each linked to distinct users: the unique index holds).
SEED = f"""
    INSERT INTO invite_links (invite_id, sender, claimer, sender_recipient_id)
    SELECT gen_random_uuid(), {UID.format("1 + i % 10000")}, {UID.format("1 + (i * 7 + 1) % 10000")},
           gen_random_uuid()
      FROM generate_series(1, 100000) AS i
     WHERE i % 10000 <> (i * 7 + 1) % 10000;
    INSERT INTO recipients (id, owner, name, linked_user)
    SELECT gen_random_uuid(), {UID.format("1 + i % 10000")}, 'person ' || i,
           CASE WHEN i % 2 = 0 THEN {UID.format("20000 + i")} END
      FROM generate_series(1, 200000) AS i;
    ANALYZE;
"""


@pytest.fixture(scope="module")
async def seeded() -> AsyncIterator[asyncpg.Connection]:
    async with seeded_database("recipients", SEED) as conn:
        yield conn


async def test_the_link_look_ups_use_their_keys(seeded: asyncpg.Connection) -> None:
    no_scan(await plan(seeded, storage.INVITE_LINK, i=uuid.uuid4()), "invite_links_pkey")
    # (owner, linked_user): the unique key, or the account erasure's (linked_user) index, equally
    # selective (one row either way).
    linked = await plan(seeded, storage.LINKED_RECIPIENT, o=user(5), l=user(20004))
    no_scan(linked)
    assert "recipients_owner_linked_user_key" in linked or "recipients_linked_user_idx" in linked, linked
    linking = await plan(seeded, storage.LINK_UNLINKED, l=user(7), id=uuid.uuid4(), o=user(5))
    no_scan(linking, "recipients_pkey")
