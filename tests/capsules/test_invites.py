"""Invites (SPEC §13) through the gateway: a capsule to someone not on the app yet, its invite,
the public preview, the claim that makes the claimer its recipient (linked, connected, the capsule
in their inbox), every refusal with nothing changed, and two claimers at once. The crash between
the two services of a claim is tests/capsules/test_invite_crash.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import asyncpg
import httpx

from launcher.stack import Stack
from tests.capsules.helpers import (
    assert_problem,
    at,
    bearer,
    claim,
    connection_ids,
    eventually,
    inbox_ids,
    invite_state,
    new_user,
    pair,
    recipients_of,
    send,
    uid,
    unlinked_recipient,
)
from tests.ratelimit.gateways import spawn_gateways

TITLE = "for when you join"
BODY = "the words only the claimer reads"


async def invited_capsule(api: httpx.AsyncClient) -> tuple[dict[str, Any], str, str, dict[str, Any]]:
    """A sender, their capsule to an unlinked recipient, its invite's token, and the capsule."""
    sender = await new_user(api, first_name="Ada", last_name="Lovelace")
    themes = (await api.get("/v1/themes")).json()["themes"]
    sent = await send(
        api, sender, await unlinked_recipient(api, sender), title=TITLE, body=BODY, themeId=themes[0]["id"]
    )
    assert sent.status_code == 200, sent.text
    capsule = sent.json()
    invite = await api.post(f"/v1/capsules/{capsule['id']}:invite", headers=bearer(sender))
    assert invite.status_code == 200, invite.text
    return sender, capsule["id"], str(invite.json()["token"]), capsule


async def test_the_life_of_an_invite(api: httpx.AsyncClient, capsules_db: asyncpg.Connection) -> None:
    sender, capsule_id, token, capsule = await invited_capsule(api)
    # Sent to no one yet: in the sender's outbox, in nobody's inbox, no recipient user.
    assert capsule["recipientUserId"] == "" if "recipientUserId" in capsule else True
    outbox = await api.get("/v1/capsules", params={"box": "outbox"}, headers=bearer(sender))
    assert [c["id"] for c in outbox.json()["capsules"]] == [capsule_id]
    # One invite per capsule: asking again answers the same.
    again = await api.post(f"/v1/capsules/{capsule_id}:invite", headers=bearer(sender))
    assert again.status_code == 200 and again.json()["token"] == token
    assert len(token) >= 32 and again.json()["url"].endswith(token)

    # The public preview: no token needed; the unlock time, the theme and the title, nothing else.
    preview = await api.get(f"/v1/invites/{token}")
    assert preview.status_code == 200, preview.text
    shown = preview.json()
    assert set(shown) <= {"unlocksAt", "themeId", "title", "claimed"}
    assert shown["title"] == TITLE and shown["themeId"] == capsule["themeId"] and not shown.get("claimed")
    assert BODY not in preview.text and uid(sender) not in preview.text and "Ada" not in preview.text
    assert preview.headers["cache-control"].startswith("public") and "max-age=60" in preview.headers["cache-control"]
    assert preview.headers.get("etag")

    # The claim: the claimer becomes the capsule's recipient, linked and connected both ways.
    claimer = await new_user(api, first_name="Grace")
    claimed = await claim(api, token, claimer)
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["id"] == capsule_id and claimed.json()["recipientUserId"] == uid(claimer)
    assert claimed.json().get("body") in (None, "")  # still sealed
    assert await inbox_ids(api, claimer) == [capsule_id]
    assert uid(claimer) in await connection_ids(api, sender)
    assert uid(sender) in await connection_ids(api, claimer)
    grandma = next(r for r in await recipients_of(api, sender) if r["name"] == "Grandma")
    assert grandma.get("linkedUserId") == uid(claimer)
    theirs = [r for r in await recipients_of(api, claimer) if r.get("linkedUserId") == uid(sender)]
    assert [r["name"] for r in theirs] == ["Ada Lovelace"]
    state = await invite_state(capsules_db, capsule_id)
    assert state["claimer"] == state["recipient_user"] == uid(claimer) and state["claimed_at"] is not None

    # After: the preview says claimed; the winner's repeat answers the capsule again; anyone else 409.
    assert (await api.get(f"/v1/invites/{token}", headers={"Cache-Control": "no-cache"})).json()["claimed"]
    repeat = await claim(api, token, claimer)
    assert repeat.status_code == 200 and repeat.json()["id"] == capsule_id
    late = await claim(api, token, await new_user(api))
    assert_problem(late, 409, "INVITE_CLAIMED", [])
    assert await connection_ids(api, sender) == [uid(claimer)]
    # The sender's invite of a claimed capsule is still the same one.
    assert (await api.post(f"/v1/capsules/{capsule_id}:invite", headers=bearer(sender))).json()["token"] == token


async def test_every_refusal_changes_nothing(api: httpx.AsyncClient, capsules_db: asyncpg.Connection) -> None:
    sender, capsule_id, token, _ = await invited_capsule(api)
    # Invites are for capsules to recipients linked to no one, asked by their sender.
    a, b, to_b = await pair(api)
    delivered = await send(api, a, to_b)
    assert_problem(
        await api.post(f"/v1/capsules/{delivered.json()['id']}:invite", headers=bearer(a)),
        400,
        "CAPSULE_DELIVERED",
        [],
    )
    assert_problem(await api.post(f"/v1/capsules/{capsule_id}:invite", headers=bearer(b)), 404, "NOT_FOUND", [])
    unknown = "01937a00-0000-7000-8000-00000000abcd"
    assert_problem(await api.post(f"/v1/capsules/{unknown}:invite", headers=bearer(a)), 404, "NOT_FOUND", [])
    assert_problem(
        await api.post("/v1/capsules/not-a-uuid:invite", headers=bearer(a)), 400, "INVALID_FIELDS", ["capsuleId"]
    )
    assert (await api.post(f"/v1/capsules/{capsule_id}:invite")).status_code == 401
    # Unknown tokens, of the right shape or not.
    for wrong in ("A" * 43, "short", "x" * 101):
        assert_problem(await api.get(f"/v1/invites/{wrong}"), 404, "NOT_FOUND", [])
        assert_problem(await claim(api, wrong, b), 404, "NOT_FOUND", [])
    # The sender cannot claim their own; a claim needs a signed-in user.
    assert_problem(await claim(api, token, sender), 400, "OWN_INVITE", [])
    assert (await api.post(f"/v1/invites/{token}:claim")).status_code == 401
    # A block between the sender and the claimer, either way: an unknown token to the claimer.
    blocked, blocker = await new_user(api), await new_user(api)
    assert (await api.post("/v1/blocks", json={"userId": uid(blocked)}, headers=bearer(sender))).status_code == 200
    assert (await api.post("/v1/blocks", json={"userId": uid(sender)}, headers=bearer(blocker))).status_code == 200
    for someone in (blocked, blocker):
        assert_problem(await claim(api, token, someone), 404, "NOT_FOUND", [])
        assert await connection_ids(api, someone) == []
    state = await invite_state(capsules_db, capsule_id)
    assert state["claimer"] is None and state["claimed_at"] is None and state["recipient_user"] is None
    # A capsule its sender deleted takes its invite with it.
    assert (await api.delete(f"/v1/capsules/{capsule_id}", headers=bearer(sender))).status_code == 200
    assert_problem(await api.get(f"/v1/invites/{token}"), 404, "NOT_FOUND", [])
    assert_problem(await claim(api, token, b), 404, "NOT_FOUND", [])
    assert (await invite_state(capsules_db, capsule_id))["claimer"] is None


async def test_of_five_claimers_at_once_exactly_one_wins(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    sender, capsule_id, token, _ = await invited_capsule(api)
    claimers = [await new_user(api) for _ in range(5)]
    answers = await asyncio.gather(*(claim(api, token, c) for c in claimers))
    assert Counter(a.status_code for a in answers) == {200: 1, 409: 4}, [a.text for a in answers]
    winner = claimers[[a.status_code for a in answers].index(200)]
    for loser, answer in zip(claimers, answers, strict=True):
        if loser is not winner:
            assert_problem(answer, 409, "INVITE_CLAIMED", [])
            assert await inbox_ids(api, loser) == []
    # One connection, one pair of linked recipients, the capsule with its one recipient.
    assert await connection_ids(api, sender) == [uid(winner)]
    linked = [r.get("linkedUserId") for r in await recipients_of(api, sender)]
    assert linked.count(uid(winner)) == 1
    assert [r.get("linkedUserId") for r in await recipients_of(api, winner)] == [uid(sender)]
    assert (await invite_state(capsules_db, capsule_id))["recipient_user"] == uid(winner)


async def test_a_capsule_to_no_one_yet_turns_ready_only_for_its_claimer(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    """The unlocker announces a capsule to its recipient: one waiting for its invite is skipped
    until claimed, then announced like any other."""
    sender, _friend, to_friend = await pair(api)
    sent = await send(api, sender, await unlinked_recipient(api, sender), unlocksAt=at(2))
    assert sent.status_code == 200, sent.text
    capsule_id = sent.json()["id"]
    # A capsule due at the same time to a linked recipient: once the unlocker announced it, it has
    # passed ours by.
    other = (await send(api, sender, to_friend, unlocksAt=at(2))).json()["id"]
    token = (await api.post(f"/v1/capsules/{capsule_id}:invite", headers=bearer(sender))).json()["token"]
    announced = "SELECT unlocked_event_at IS NOT NULL FROM capsules WHERE id = $1::uuid"

    async def announced_yet(capsule: str) -> bool | None:
        return True if await capsules_db.fetchval(announced, capsule) else None

    await eventually(lambda: announced_yet(other))
    assert await capsules_db.fetchval(announced, capsule_id) is False
    claimer = await new_user(api)
    assert (await claim(api, token, claimer)).status_code == 200
    opened = await api.post(f"/v1/capsules/{capsule_id}:open", headers=bearer(claimer))
    assert opened.status_code == 200 and opened.json()["body"] == "a letter"
    await eventually(lambda: announced_yet(capsule_id))


async def test_the_public_preview_spends_the_per_ip_budget(api: httpx.AsyncClient, stack: Stack) -> None:
    """Unauthenticated, the preview is limited per IP like any call without a token (SPEC §7)."""
    _, _, token, _ = await invited_capsule(api)
    ((url, process),) = spawn_gateways(
        stack, ["invites-rl"], GATEWAY_RATELIMIT_IP="3/3600", GATEWAY_RATELIMIT_USER="1000/3600"
    )
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            answers = [await client.get(f"/v1/invites/{token}") for _ in range(4)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        assert answers[0].headers["ratelimit-limit"] == "3"
        assert_problem(answers[3], 429, "RATE_LIMITED", [])
    finally:
        process.stop(10)
