"""Account deletion across every service (SPEC §14; issue 17's second "Done when"): under load from
other users, every row naming the account is gone or unlinked in every database, the letters it
had delivered stay with their recipients from "a deleted account", its tokens are refused, and a
kill of any service mid-saga (SIGKILL at chosen failpoints) then a restart finishes the deletion
exactly once.

A stack of its own, one instance of each service, so the one that dies is the one doing the work
(tests/notifications/test_crash_exactly_once.py restarts instances the same way). TEST-ONLY
settings: the final pass runs 2 s after the deletion (not 30 s), and an unacked entry is taken
over after 1 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from launcher import infra as infra_mod
from launcher.keys import KeyPair
from launcher.stack import Stack
from tests.capsules.helpers import bearer, connect, eventually, new_user, recipient_of, send, uid
from tests.conftest import CAPSULE_LEAD_SECONDS
from tests.crashes import connect_db, died_at_the_failpoint, restart, start_crash_stack, start_the_dead
from tests.deletion.world import NIL, PARTICIPANTS, build, completed, delete_me, left_over, reports

pytestmark = pytest.mark.slow(60)

SETTLE_SECONDS = 2.0
# The tables where build() gives the victim rows (world.LEFT_OVER names them all).
EVERYWHERE = {
    "auth.users",
    "auth.refresh_tokens",
    "recipients.connections",
    "recipients.connection_requests",
    "recipients.blocks",
    "recipients.recipients (own)",
    "recipients.recipients (linked)",
    "recipients.thoughts",
    "capsules.capsules",
    "capsules.self_letters",
    "capsules.capsule_shares",
    "notifications.notifications",
    "notifications.devices",
}


@pytest.fixture(scope="module")
def stack_of_our_own(infra: infra_mod.Infra, jwt_keys: KeyPair) -> Iterator[Stack]:
    stack = start_crash_stack(
        infra,
        jwt_keys,
        {
            "CAPSULE_MIN_UNLOCK_LEAD_SECONDS": str(CAPSULE_LEAD_SECONDS),
            "STREAM_CLAIM_IDLE_MS": "1000",
            "ACCOUNT_DELETION_SETTLE_SECONDS": str(SETTLE_SECONDS),
        },
    )
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
async def api(stack_of_our_own: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack_of_our_own.gateway_url, timeout=30.0) as client:
        yield client


class Load:
    """Other users going about their business (reads and writes in every service) until stopped;
    `failures` collects every answer that is not a success or a 4xx the call may meet."""

    def __init__(self, api: httpx.AsyncClient) -> None:
        self.api = api
        self.calls = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, pairs: int = 2) -> None:
        for _ in range(pairs):
            a, b = await new_user(self.api), await new_user(self.api)
            await connect(self.api, a, b)
            self._tasks.append(asyncio.create_task(self._user(a, await recipient_of(self.api, a, b))))
            self._tasks.append(asyncio.create_task(self._user(b, await recipient_of(self.api, b, a))))

    async def toward(self, sender: dict[str, Any], recipient_id: str) -> None:
        """`sender` keeps writing to the account being deleted: letters to its recipient."""
        self._tasks.append(asyncio.create_task(self._user(sender, recipient_id)))

    async def _user(self, who: dict[str, Any], recipient_id: str) -> None:
        calls = [
            lambda: self.api.get("/v1/capsules", params={"box": "inbox"}, headers=bearer(who)),
            lambda: send(self.api, who, recipient_id),
            lambda: self.api.get("/v1/connections", headers=bearer(who)),
            lambda: self.api.get("/v1/notifications", headers=bearer(who)),
            lambda: self.api.get("/v1/me", headers=bearer(who)),
        ]
        turn = 0
        while not self._stop.is_set():
            call = calls[turn % len(calls)]
            turn += 1
            try:
                answer = await call()
            except httpx.HTTPError as exc:
                self.failures.append(f"{type(exc).__name__}")
                continue
            self.calls += 1
            if answer.status_code >= 500:
                self.failures.append(f"{answer.status_code} {answer.text[:200]}")

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def refused_everywhere(api: httpx.AsyncClient, user: dict[str, Any], within: float = 2.0) -> float:
    """Seconds until every service refuses the user's access token (SPEC §3: within 2 s)."""
    started = time.monotonic()
    routes = ["/v1/me", "/v1/connections", "/v1/capsules", "/v1/notifications", "/v1/devices"]

    async def refused() -> bool | None:
        answers = [await api.get(route, headers=bearer(user)) for route in routes]
        return True if all(a.status_code == 401 for a in answers) else None

    await eventually(refused, within=within, every=0.05)
    return time.monotonic() - started


async def test_deletion_under_load_erases_everything_and_keeps_delivered_letters(
    stack_of_our_own: Stack, api: httpx.AsyncClient
) -> None:
    stack = stack_of_our_own
    world = await build(api)
    victim = uid(world.victim)
    # Before: the victim is in every table the deletion must empty (so that "nothing left" below
    # means something).
    assert set(await left_over(stack, victim)) >= EVERYWHERE
    load = Load(api)
    await load.start()
    # A friend keeps writing to the victim through the deletion: what lands after the first pass
    # is erased by the final one.
    await load.toward(world.friends[1], await recipient_of(api, world.friends[1], world.victim))
    try:
        deleted = await delete_me(api, world.victim)
        assert deleted.status_code == 200, deleted.text
        took = await refused_everywhere(api, world.victim)
        row = await completed(stack, victim)
    finally:
        await load.stop()
    assert load.failures == [], load.failures[:5]
    assert load.calls > 50

    assert await left_over(stack, victim) == {}
    assert sorted(row["erased_first"]) == PARTICIPANTS and sorted(row["erased_final"]) == PARTICIPANTS
    assert row["sessions_ended_at"] <= row["completed_at"]
    assert await reports(stack, victim) == {service: 2 for service in PARTICIPANTS}
    assert took <= 2.0

    # The delivered letters stay with their recipients, from "a deleted account" (with the reply
    # and the share their recipient made); the rest of what the victim sent is gone.
    capsules = await connect_db(stack, "capsules")
    try:
        kept = await capsules.fetch(
            "SELECT id::text, sender::text FROM capsules WHERE id = ANY($1::uuid[])", world.delivered_sent
        )
        assert sorted(r["id"] for r in kept) == sorted(world.delivered_sent)
        assert {r["sender"] for r in kept} == {NIL}
        gone = world.sealed_sent + world.received
        assert await capsules.fetchval("SELECT count(*) FROM capsules WHERE id = ANY($1::uuid[])", gone) == 0
        assert (
            await capsules.fetchval(
                "SELECT count(*) FROM capsule_replies WHERE capsule_id = $1::uuid", world.kept_reply_on
            )
            == 1
        )
        assert (
            await capsules.fetchval(
                "SELECT count(*) FROM capsule_shares WHERE capsule_id = $1::uuid AND sender_name IS NULL",
                world.kept_reply_on,
            )
            == 1
        )
    finally:
        await capsules.close()
    shown = await api.get(f"/v1/capsules/{world.kept_reply_on}", headers=bearer(world.friends[0]))
    assert shown.status_code == 200, shown.text
    letter = shown.json()
    assert letter["senderDeleted"] is True and not letter.get("senderId") and not letter.get("sender")
    assert letter["body"]
    inbox = await api.get("/v1/capsules", params={"box": "inbox"}, headers=bearer(world.friends[0]))
    assert world.kept_reply_on in [c["id"] for c in inbox.json()["capsules"]]
    # The friends' recipients for the victim are theirs still, unlinked.
    for friend in world.friends:
        listed = await api.get("/v1/recipients", headers=bearer(friend))
        assert listed.status_code == 200, listed.text
        assert not [r for r in listed.json().get("recipients", []) if r.get("linkedUserId") == victim]
    # And the victim's refresh token and password open nothing.
    refreshed = await api.post("/v1/auth:refresh", json={"refreshToken": world.victim["refreshToken"]})
    assert refreshed.status_code == 401, refreshed.text
    logged = await api.post(
        "/v1/auth:login", json={"username": world.victim["user"]["username"], "password": "correct horse battery"}
    )
    assert logged.status_code == 401, logged.text


# (victim service, failpoint): where a kill hurts each step most.
KILLS = [
    ("auth", "deletion.committed"),  # deleted, sessions not ended: the saga's consumer ends them
    ("auth", "deletion.recorded"),  # a report recorded, its entry not acked: recorded again, once
    ("recipients", "erasure.partway"),  # a batch erased, the rest not
    ("capsules", "erasure.partway"),
    ("capsules", "erasure.erased"),  # erased, not reported
    ("notifications", "erasure.partway"),
    ("notifications", "erasure.reported"),  # reported, its entry not acked
]


@pytest.mark.parametrize(("service", "failpoint"), KILLS, ids=[f"{s}-{f}" for s, f in KILLS])
async def test_a_kill_mid_saga_then_a_restart_finishes_the_deletion_once(
    stack_of_our_own: Stack, api: httpx.AsyncClient, service: str, failpoint: str
) -> None:
    stack = stack_of_our_own
    await start_the_dead(stack)  # a previous case that failed may have left its victim dead
    world = await build(api, rich=service != "auth")
    victim = uid(world.victim)
    probe = await new_user(api)
    await restart(stack, api, service, probe, failpoint)
    deleted = await delete_me(api, world.victim)
    if service == "auth":
        # Killed after its commit, or by a report recorded (a consumer of the same process) while
        # the request was still ending the sessions: the answer may be lost, never the deletion.
        assert deleted.status_code in (200, 502, 503), deleted.text
        if failpoint == "deletion.committed":
            assert deleted.status_code != 200
    else:
        assert deleted.status_code == 200, deleted.text
    await died_at_the_failpoint(stack, service)
    await restart(stack, api, service, probe, "")

    row = await completed(stack, victim)
    assert await left_over(stack, victim) == {}
    assert sorted(row["erased_first"]) == PARTICIPANTS and sorted(row["erased_final"]) == PARTICIPANTS
    assert await reports(stack, victim) == {s: 2 for s in PARTICIPANTS}
    await refused_everywhere(api, world.victim)
    assert (await delete_me(api, world.victim)).status_code == 401
