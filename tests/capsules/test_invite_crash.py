"""An invite's claim spans two services (services/capsules/invites.py); the capsules process dies
between them (a failpoint: services/common/failpoints.py) and nothing is left half given:
- dead after the claim began, before the recipients service linked the two users: the invite
  stays the claimer's (no one else can take it), nothing is linked; the claimer's repeat completes
  it;
- dead after the link, before the capsule got its recipient: the users are linked, the capsule is
  in no inbox; the resumer, a background job, completes it without the claimer coming back, and
  nothing is linked twice.

A stack of its own (one instance of each service: the dying one must be the one that serves the
claim), restarted with another FAILPOINTS between the two cases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest

from launcher import infra as infra_mod
from launcher.keys import KeyPair
from launcher.stack import Stack
from services.common.failpoints import EXIT_CODE
from tests.capsules.helpers import assert_problem, bearer, eventually, new_user, send, uid
from tests.capsules.test_invites import (
    claim,
    connection_ids,
    inbox_ids,
    invite_state,
    recipients_of,
    unlinked_recipient,
)
from tests.conftest import start_test_stack

pytestmark = pytest.mark.slow(25)


@pytest.fixture(scope="module")
def stack_of_our_own(infra: infra_mod.Infra, jwt_keys: KeyPair) -> Iterator[Stack]:
    stack = start_test_stack(
        infra,
        jwt_keys,
        instances={"auth": 1, "recipients": 1, "capsules": 1},
        gateway_env={"GATEWAY_RATELIMIT_ENABLED": "0"},
        service_env={"FAILPOINTS": "invite.claim.begun", "CAPSULE_INVITE_RESUME_AFTER_SECONDS": "3600"},
    )
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
async def api(stack_of_our_own: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack_of_our_own.gateway_url, timeout=30.0) as client:
        yield client


@pytest.fixture
async def capsules_db(stack_of_our_own: Stack) -> AsyncIterator[asyncpg.Connection]:
    dsn = stack_of_our_own.database_urls["capsules"].replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def restart_capsules(stack: Stack, api: httpx.AsyncClient, **env: str) -> None:
    """The capsules instance (dead at a failpoint, or stopped here) started again with `env` added
    to the services' environment; returns once the gateway reaches it."""
    instance = stack.instance("capsules", 0)
    if instance.running:
        await stack.astop_instance(instance)
    stack.settings = replace(stack.settings, service_env={**stack.settings.service_env, **env})
    await stack.astart_instance("capsules", 0)

    async def served() -> bool | None:
        return True if (await api.get("/v1/themes")).status_code == 200 else None

    await eventually(served)


async def died_at_the_failpoint(stack: Stack) -> None:
    code = await asyncio.to_thread(stack.instance("capsules", 0).process.wait, 15)
    assert code == EXIT_CODE


async def invite(api: httpx.AsyncClient, sender: dict[str, Any], name: str) -> tuple[str, str]:
    sent = await send(api, sender, await unlinked_recipient(api, sender, name))
    assert sent.status_code == 200, sent.text
    made = await api.post(f"/v1/capsules/{sent.json()['id']}:invite", headers=bearer(sender))
    assert made.status_code == 200, made.text
    return sent.json()["id"], made.json()["token"]


def linked_to(recipients: list[dict[str, Any]], user: dict[str, Any]) -> list[str]:
    return [r["name"] for r in recipients if r.get("linkedUserId") == uid(user)]


async def test_a_claim_cut_short_is_completed_and_never_half_given(
    stack_of_our_own: Stack, api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    stack = stack_of_our_own
    sender = await new_user(api, first_name="Ada")

    # 1. Dead after the claim began: the invite is the claimer's, nothing is linked.
    first, token = await invite(api, sender, "Grandma")
    claimer = await new_user(api)
    cut = await claim(api, token, claimer)
    assert cut.status_code in (502, 503), cut.text
    await died_at_the_failpoint(stack)
    state = await invite_state(capsules_db, first)
    assert state["claimer"] == uid(claimer) and state["claimed_at"] is None and state["recipient_user"] is None
    assert await connection_ids(api, sender) == []
    assert linked_to(await recipients_of(api, sender), claimer) == []

    await restart_capsules(stack, api, FAILPOINTS="")
    # Nobody else can take it meanwhile; the claimer's repeat completes it.
    assert_problem(await claim(api, token, await new_user(api)), 409, "INVITE_CLAIMED", [])
    again = await claim(api, token, claimer)
    assert again.status_code == 200, again.text
    assert await inbox_ids(api, claimer) == [first]
    assert await connection_ids(api, sender) == [uid(claimer)]
    assert linked_to(await recipients_of(api, sender), claimer) == ["Grandma"]
    assert linked_to(await recipients_of(api, claimer), sender) == ["Ada"]

    # 2. Dead after the link, before the capsule got its recipient: the users are linked, the
    # capsule is in no inbox — until the resumer completes it, the claimer never coming back.
    await restart_capsules(stack, api, FAILPOINTS="invite.claim.linked")
    second, token = await invite(api, sender, "Grandpa")
    other = await new_user(api)
    cut = await claim(api, token, other)
    assert cut.status_code in (502, 503), cut.text
    await died_at_the_failpoint(stack)
    state = await invite_state(capsules_db, second)
    assert state["claimer"] == uid(other) and state["claimed_at"] is None and state["recipient_user"] is None
    assert uid(other) in await connection_ids(api, sender)

    await restart_capsules(
        stack, api, FAILPOINTS="", CAPSULE_INVITE_RESUME_AFTER_SECONDS="1", CAPSULE_INVITE_RESUME_INTERVAL_SECONDS="0.2"
    )

    async def delivered() -> bool | None:
        return True if await inbox_ids(api, other) == [second] else None

    await eventually(delivered)
    state = await invite_state(capsules_db, second)
    assert state["recipient_user"] == uid(other) and state["claimed_at"] is not None
    # Linked once: one connection each, one recipient each way.
    assert sorted(await connection_ids(api, sender)) == sorted([uid(claimer), uid(other)])
    assert linked_to(await recipients_of(api, sender), other) == ["Grandpa"]
    assert linked_to(await recipients_of(api, other), sender) == ["Ada"]
    # The claimer's own late repeat changes nothing more.
    assert (await claim(api, token, other)).status_code == 200
    assert sorted(await connection_ids(api, sender)) == sorted([uid(claimer), uid(other)])
