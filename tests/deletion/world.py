"""A person with a life in every service, to delete (SPEC §14), and what each database holds of
them afterwards: the deletion tests' shared steps."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from launcher.stack import Stack
from tests.auth.test_auth_http import PASSWORD
from tests.capsules.helpers import at, bearer, connect, eventually, new_user, recipient_of, send, uid
from tests.crashes import connect_db

NIL = "00000000-0000-0000-0000-000000000000"
PARTICIPANTS = ["capsules", "notifications", "recipients"]


@dataclass
class World:
    victim: dict[str, Any]
    friends: list[dict[str, Any]]  # connected to the victim
    others: list[dict[str, Any]]  # requests, blocks
    sealed_sent: list[str] = field(default_factory=list)  # go
    delivered_sent: list[str] = field(default_factory=list)  # stay, from "a deleted account"
    received: list[str] = field(default_factory=list)  # go (the victim's inbox)
    kept_reply_on: str = ""  # a delivered letter its recipient replied to: the reply stays


async def delete_me(api: httpx.AsyncClient, user: dict[str, Any], password: str = PASSWORD) -> httpx.Response:
    return await api.request("DELETE", "/v1/me", json={"password": password}, headers=bearer(user))


async def opened(api: httpx.AsyncClient, who: dict[str, Any], cid: str) -> dict[str, Any]:
    async def open_it() -> dict[str, Any] | None:
        answer = await api.post(f"/v1/capsules/{cid}:open", headers=bearer(who), json={})
        return dict(answer.json()) if answer.status_code == 200 else None

    return await eventually(open_it, within=20.0)


async def build(api: httpx.AsyncClient, *, rich: bool = True) -> World:
    """The victim V: connected to two friends (each keeps a recipient linked to V), a request each
    way pending, blocks both ways, letters sent (sealed, delivered and opened, delivered and
    replied to, an invite nobody claimed), letters received, a self letter, thoughts both ways,
    a device, notifications of its own and about it in others' lists."""
    victim = await new_user(api)
    friends = [await new_user(api), await new_user(api)]
    for friend in friends:
        await connect(api, victim, friend)
    world = World(victim, friends, [])
    to_friend = [await recipient_of(api, victim, f) for f in friends]
    # Delivered letters first (they need a few seconds to become ready).
    for index in range(2 if rich else 1):
        made = await send(api, victim, to_friend[index % 2], unlocksAt=at(4))
        assert made.status_code == 200, made.text
        world.delivered_sent.append(made.json()["id"])
        # A countdown share while it is sealed (it keeps the sender's name: cleared when kept).
        shared = await api.post(
            f"/v1/capsules/{made.json()['id']}/shares", json={"kind": "story"}, headers=bearer(friends[index % 2])
        )
        assert shared.status_code == 200, shared.text
    made = await send(api, victim, to_friend[0])  # an hour ahead: sealed
    assert made.status_code == 200, made.text
    world.sealed_sent.append(made.json()["id"])
    back = await send(api, friends[0], await recipient_of(api, friends[0], victim))
    assert back.status_code == 200, back.text
    world.received.append(back.json()["id"])
    if not rich:
        return world

    requester, asked, blocker, blocked = [await new_user(api) for _ in range(4)]
    world.others = [requester, asked, blocker, blocked]
    for sender, to in ((requester, victim), (victim, asked)):
        made = await api.post("/v1/connection-requests", json={"toUserId": uid(to)}, headers=bearer(sender))
        assert made.status_code == 200, made.text
    for who, whom in ((blocker, victim), (victim, blocked)):
        made = await api.post("/v1/blocks", json={"userId": uid(whom)}, headers=bearer(who))
        assert made.status_code == 200, made.text
    # A share the victim made of a letter it received (goes with it and with its maker).
    shared = await api.post(f"/v1/capsules/{world.received[0]}/shares", json={"kind": "link"}, headers=bearer(victim))
    assert shared.status_code == 200, shared.text
    grandma = await api.post("/v1/recipients", json={"name": "Grandma"}, headers=bearer(victim))
    assert grandma.status_code == 200, grandma.text
    invited = await send(api, victim, grandma.json()["id"], unlocksAt=at(2))
    assert invited.status_code == 200, invited.text
    world.sealed_sent.append(invited.json()["id"])  # delivered to no one: goes
    invite = await api.post(f"/v1/capsules/{invited.json()['id']}:invite", headers=bearer(victim))
    assert invite.status_code == 200, invite.text
    letter = {"title": "a note", "body": "Dear future me, did you keep running?", "lifeArea": "health"}
    made = await api.post("/v1/self-letters", json={**letter, "opensAt": at(3600)}, headers=bearer(victim))
    assert made.status_code == 200, made.text
    for sender, to in ((victim, friends[0]), (friends[1], victim)):
        made = await api.post("/v1/thoughts", json={"toUserId": uid(to)}, headers=bearer(sender))
        assert made.status_code == 200, made.text
    device = await api.put(f"/v1/devices/{'ab' * 32}", json={"platform": "apns"}, headers=bearer(victim))
    assert device.status_code == 200, device.text
    # The friends open what they were sent; one replies, and shares it.
    for index, cid in enumerate(world.delivered_sent):
        await opened(api, friends[index % 2], cid)
    world.kept_reply_on = world.delivered_sent[0]
    replied = await api.post(
        f"/v1/capsules/{world.kept_reply_on}/reply",
        json={"emoji": "\u2764", "text": "thanks"},
        headers=bearer(friends[0]),
    )
    assert replied.status_code == 200, replied.text
    return world


# Every row that names the account, per database (SPEC §14): all must be 0 once it is deleted.
LEFT_OVER = {
    "auth": {
        "users": "SELECT count(*) FROM users WHERE id = $1",
        "refresh_tokens": "SELECT count(*) FROM refresh_tokens WHERE user_id = $1",
    },
    "recipients": {
        "connections": "SELECT count(*) FROM connections WHERE user_low = $1 OR user_high = $1",
        "connection_requests": "SELECT count(*) FROM connection_requests WHERE from_user = $1 OR to_user = $1",
        "blocks": "SELECT count(*) FROM blocks WHERE blocker = $1 OR blocked = $1",
        "recipients (own)": "SELECT count(*) FROM recipients WHERE owner = $1",
        "recipients (linked)": "SELECT count(*) FROM recipients WHERE linked_user = $1",
        "thoughts": "SELECT count(*) FROM thoughts WHERE sender = $1 OR receiver = $1",
        "invite_links": "SELECT count(*) FROM invite_links WHERE sender = $1 OR claimer = $1",
    },
    "capsules": {
        "capsules": "SELECT count(*) FROM capsules WHERE sender = $1 OR recipient_user = $1",
        "self_letters": "SELECT count(*) FROM self_letters WHERE author = $1",
        "capsule_replies": "SELECT count(*) FROM capsule_replies WHERE author = $1",
        "capsule_shares": "SELECT count(*) FROM capsule_shares WHERE created_by = $1",
        "invites": "SELECT count(*) FROM invites WHERE claimer = $1",
    },
    "notifications": {
        "notifications": "SELECT count(*) FROM notifications WHERE user_id = $1 OR other_user_id = $1",
        "devices": "SELECT count(*) FROM devices WHERE user_id = $1",
        "push_deliveries": "SELECT count(*) FROM push_deliveries p JOIN devices d ON d.token = p.token "
        "WHERE d.user_id = $1",
    },
}


async def left_over(stack: Stack, user: str) -> dict[str, int]:
    """table → rows still naming `user`, in every database (only the non-zero ones)."""
    found: dict[str, int] = {}
    for service, queries in LEFT_OVER.items():
        db = await connect_db(stack, service)
        try:
            for table, query in queries.items():
                count = int(await db.fetchval(query, uuid.UUID(user)))
                if count:
                    found[f"{service}.{table}"] = count
        finally:
            await db.close()
    return found


async def deletion_of(stack: Stack, user: str) -> asyncpg.Record | None:
    db = await connect_db(stack, "auth")
    try:
        return await db.fetchrow("SELECT * FROM account_deletions WHERE user_id = $1", uuid.UUID(user))
    finally:
        await db.close()


async def completed(stack: Stack, user: str, within: float = 60.0) -> asyncpg.Record:
    async def done() -> asyncpg.Record | None:
        row = await deletion_of(stack, user)
        return row if row is not None and row["completed_at"] is not None else None

    return await eventually(done, within=within, every=0.25)


async def reports(stack: Stack, user: str) -> dict[str, int]:
    """service → account.erased events for `user` in its outbox (one per pass, never more)."""
    counts: dict[str, int] = {}
    for service in PARTICIPANTS:
        db = await connect_db(stack, service)
        try:
            counts[service] = int(
                await db.fetchval(
                    "SELECT count(*) FROM outbox WHERE type = 'account.erased' AND data->>'user_id' = $1", user
                )
            )
        finally:
            await db.close()
    return counts
