"""RelationshipService.LinkInvitedUser (SPEC §13, the recipients' side of an invite claim), called
over gRPC through Envoy as the capsules workload (its only caller, with no user token), and checked
through the public HTTP API as each user and in the database: the first link, a repeat that writes
nothing, a sender already linked to the claimer, a pending request accepted, a deleted or re-linked
invited entry, every refusal with its error and no row written (bad ids, the sender claiming,
blocks either way, the same invite for another claimer, other workloads), and five parallel links
of one invite."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from capsule.recipients.v1 import relationships_pb2, relationships_pb2_grpc

from launcher.stack import Stack
from mesh.topology import RECIPIENTS
from tests.common.test_hostile_strings import violations
from tests.mesh.test_mesh_trust import reason_of
from tests.recipients.helpers import ask, bearer, connect, new_user, uid

Stub = relationships_pb2_grpc.RelationshipServiceStub


@pytest.fixture
async def recipients_db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    dsn = stack.database_urls["recipients"].replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def capsules(stack: Stack) -> AsyncIterator[Stub]:
    """The stub the capsules service would use: through Envoy, with the capsules identity."""
    async with stack.envoy_channel("capsules") as channel:
        yield Stub(channel)


async def link(stub: Stub, sender: dict[str, Any], recipient_id: str, claimer: dict[str, Any], **fields: str) -> str:
    request = relationships_pb2.LinkInvitedUserRequest(
        invite_id=fields.pop("invite_id", str(uuid.uuid4())),
        sender_user_id=uid(sender),
        recipient_id=recipient_id,
        claimer_user_id=uid(claimer),
        sender_display_name=fields.pop("sender_display_name", "Ada Lovelace"),
    )
    # No authorization metadata: a resumed claim has no user token.
    answer = await stub.LinkInvitedUser(request, timeout=10)
    return answer.sender_recipient_id


async def relationship(stub: Stub, user: dict[str, Any], other: dict[str, Any]) -> tuple[bool, bool]:
    answer = await stub.GetRelationship(
        relationships_pb2.GetRelationshipRequest(user_id=uid(user), other_user_id=uid(other)),
        metadata=(("authorization", f"Bearer {user['accessToken']}"),),
        timeout=10,
    )
    return answer.connected, answer.blocked


async def refused(stub: Stub, request: relationships_pb2.LinkInvitedUserRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.LinkInvitedUser(request, timeout=10)
    return caught.value


async def entry(client: httpx.AsyncClient, owner: dict[str, Any], name: str = "Grandma") -> str:
    """An address-book entry linked to no one: where an invited letter goes."""
    made = await client.post("/v1/recipients", json={"name": name}, headers=bearer(owner))
    assert made.status_code == 200, made.text
    return str(made.json()["id"])


async def recipients_of(client: httpx.AsyncClient, owner: dict[str, Any]) -> dict[str, dict[str, Any]]:
    listed = await client.get("/v1/recipients", headers=bearer(owner))
    assert listed.status_code == 200, listed.text
    return {r["id"]: r for r in listed.json().get("recipients", [])}


async def connections_of(client: httpx.AsyncClient, user: dict[str, Any]) -> list[str]:
    listed = await client.get("/v1/connections", headers=bearer(user))
    assert listed.status_code == 200, listed.text
    return [c["userId"] for c in listed.json().get("connections", [])]


async def pair_state(db: asyncpg.Connection, a: dict[str, Any], b: dict[str, Any]) -> dict[str, int]:
    """Row counts that a link writes: what a refusal or a repeat must leave as they were."""
    x, y = uuid.UUID(uid(a)), uuid.UUID(uid(b))
    row = await db.fetchrow(
        """
        SELECT (SELECT count(*) FROM invite_links WHERE (sender, claimer) IN (($1, $2), ($2, $1))) AS links,
               (SELECT count(*) FROM connections WHERE user_low = least($1, $2)
                                                  AND user_high = greatest($1, $2)) AS connections,
               (SELECT count(*) FROM recipients WHERE owner = $1 AND linked_user = $2) AS a_linked,
               (SELECT count(*) FROM recipients WHERE owner = $2 AND linked_user = $1) AS b_linked,
               (SELECT count(*) FROM recipients WHERE owner IN ($1, $2)) AS recipients,
               (SELECT max(updated_at) FROM recipients WHERE owner IN ($1, $2)) AS last_update
        """,
        x,
        y,
    )
    return dict(row)


# --- the life of a link ---------------------------------------------------------------------------


async def test_first_link_connects_and_links_both_sides_and_a_repeat_writes_nothing(
    client: httpx.AsyncClient, capsules: Stub, recipients_db: asyncpg.Connection
) -> None:
    sender, claimer = await new_user(client), await new_user(client)
    invited = await entry(client, sender)
    invite = str(uuid.uuid4())
    assert await relationship(capsules, sender, claimer) == (False, False)  # now in the cache

    assert await link(capsules, sender, invited, claimer, invite_id=invite) == invited

    # The sender's entry is now the claimer; the claimer has the sender, named as the claim said.
    theirs = await recipients_of(client, sender)
    assert theirs[invited]["name"] == "Grandma" and theirs[invited]["linkedUserId"] == uid(claimer)
    assert len(theirs) == 1
    mine = list((await recipients_of(client, claimer)).values())
    assert [(r["name"], r["linkedUserId"]) for r in mine] == [("Ada Lovelace", uid(sender))]
    assert await connections_of(client, sender) == [uid(claimer)]
    assert await connections_of(client, claimer) == [uid(sender)]
    # The internal answer the capsules service sends by (cached) was rewritten after the commit.
    assert await relationship(capsules, sender, claimer) == (True, False)
    before = await pair_state(recipients_db, sender, claimer)
    assert before["links"] == 1 and before["connections"] == 1
    assert before["a_linked"] == 1 and before["b_linked"] == 1

    # A repeat (a resumed claim) answers the same and writes nothing, with other display names too.
    assert await link(capsules, sender, invited, claimer, invite_id=invite, sender_display_name="Other") == invited
    assert await pair_state(recipients_db, sender, claimer) == before
    # Even once things changed: the recorded answer, nothing written (a block would refuse a new link).
    await client.post("/v1/blocks", json={"userId": uid(sender)}, headers=bearer(claimer))
    after_block = await pair_state(recipients_db, sender, claimer)
    assert await link(capsules, sender, invited, claimer, invite_id=invite) == invited
    assert await pair_state(recipients_db, sender, claimer) == after_block


async def test_a_sender_already_linked_to_the_claimer_keeps_that_recipient(
    client: httpx.AsyncClient, capsules: Stub, recipients_db: asyncpg.Connection
) -> None:
    sender, claimer = await new_user(client), await new_user(client)
    await connect(client, sender, claimer)
    (already,) = [r["id"] for r in (await recipients_of(client, sender)).values()]
    invited = await entry(client, sender, "Old friend")
    before = await pair_state(recipients_db, sender, claimer)

    assert await link(capsules, sender, invited, claimer) == already

    theirs = await recipients_of(client, sender)
    assert theirs[already]["linkedUserId"] == uid(claimer)
    assert theirs[invited].get("linkedUserId", "") == ""  # the invited entry stays linked to no one
    after = await pair_state(recipients_db, sender, claimer)
    assert after == {**before, "links": 1}  # no second connection, no new recipient, nothing renamed
    assert await connections_of(client, sender) == [uid(claimer)]


@pytest.mark.parametrize("claimer_asked", [False, True], ids=["sender-asked", "claimer-asked"])
async def test_a_pending_request_between_them_becomes_accepted(
    client: httpx.AsyncClient, capsules: Stub, recipients_db: asyncpg.Connection, claimer_asked: bool
) -> None:
    sender, claimer = await new_user(client), await new_user(client)
    asker, asked = (claimer, sender) if claimer_asked else (sender, claimer)
    request = await ask(client, asker, asked)
    assert request.status_code == 200, request.text
    invited = await entry(client, sender)

    assert await link(capsules, sender, invited, claimer) == invited

    status = await recipients_db.fetchval(
        "SELECT status FROM connection_requests WHERE id = $1", uuid.UUID(request.json()["id"])
    )
    assert status == "accepted"
    for user, direction in ((asker, "outgoing"), (asked, "incoming")):
        pending = await client.get("/v1/connection-requests", params={"direction": direction}, headers=bearer(user))
        assert pending.status_code == 200 and pending.json().get("connectionRequests", []) == [], pending.text
    assert await connections_of(client, claimer) == [uid(sender)]


async def test_a_deleted_or_relinked_entry_gives_the_sender_a_new_linked_recipient(
    client: httpx.AsyncClient, capsules: Stub
) -> None:
    # Deleted since the capsule went to it: a new entry, named like a request's when no profile.
    sender, claimer = await new_user(client), await new_user(client)
    gone = await entry(client, sender)
    assert (await client.delete(f"/v1/recipients/{gone}", headers=bearer(sender))).status_code == 200
    made = await link(capsules, sender, gone, claimer, sender_display_name="  ")
    assert made != gone
    theirs = await recipients_of(client, sender)
    assert [(r["id"], r["name"], r["linkedUserId"]) for r in theirs.values()] == [(made, "user", uid(claimer))]
    # An empty display name: the claimer's entry gets the same default.
    assert [r["name"] for r in (await recipients_of(client, claimer)).values()] == ["user"]

    # Linked to someone else since: that entry is left alone, the new one takes its name. A long
    # display name is cut to the recipients' 100 characters.
    sender, claimer, friend = await new_user(client), await new_user(client), await new_user(client)
    await connect(client, sender, friend)
    (auto,) = (await recipients_of(client, sender)).keys()  # made by the accept: out of the way
    assert (await client.delete(f"/v1/recipients/{auto}", headers=bearer(sender))).status_code == 200
    invited = await entry(client, sender, "Cousin")
    edited = await client.patch(f"/v1/recipients/{invited}", json={"linkedUserId": uid(friend)}, headers=bearer(sender))
    assert edited.status_code == 200, edited.text
    made = await link(capsules, sender, invited, claimer, sender_display_name="x" * 150)
    theirs = await recipients_of(client, sender)
    assert theirs[invited]["linkedUserId"] == uid(friend)
    assert (theirs[made]["name"], theirs[made]["linkedUserId"]) == ("Cousin", uid(claimer))
    assert [r["name"] for r in (await recipients_of(client, claimer)).values()] == ["x" * 100]


# --- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sender_blocks", [True, False], ids=["sender-blocks", "claimer-blocks"])
async def test_a_block_either_way_is_not_connected_and_writes_nothing(
    client: httpx.AsyncClient, capsules: Stub, recipients_db: asyncpg.Connection, sender_blocks: bool
) -> None:
    sender, claimer = await new_user(client), await new_user(client)
    invited = await entry(client, sender)
    blocker, blocked = (sender, claimer) if sender_blocks else (claimer, sender)
    assert (await client.post("/v1/blocks", json={"userId": uid(blocked)}, headers=bearer(blocker))).status_code == 200
    before = await pair_state(recipients_db, sender, claimer)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await link(capsules, sender, invited, claimer)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(caught.value) == "NOT_CONNECTED"
    assert await pair_state(recipients_db, sender, claimer) == before
    assert (await recipients_of(client, sender))[invited].get("linkedUserId", "") == ""


async def test_bad_ids_and_the_sender_claiming_are_invalid_arguments(
    client: httpx.AsyncClient, capsules: Stub, recipients_db: asyncpg.Connection
) -> None:
    sender = await new_user(client)
    invited = await entry(client, sender)
    good = {
        "invite_id": str(uuid.uuid4()),
        "sender_user_id": uid(sender),
        "recipient_id": invited,
        "claimer_user_id": str(uuid.uuid4()),
        "sender_display_name": "Ada",
    }
    request = relationships_pb2.LinkInvitedUserRequest
    # Every bad id at once, named by its proto field.
    error = await refused(capsules, request(**{**good, "invite_id": "", "sender_user_id": "nope", "recipient_id": "1"}))
    assert violations(error) == ["invite_id", "sender_user_id", "recipient_id"]
    error = await refused(capsules, request(**{**good, "claimer_user_id": "not-a-uuid"}))
    assert violations(error) == ["claimer_user_id"]
    error = await refused(capsules, request(**{**good, "claimer_user_id": uid(sender)}))
    assert violations(error) == ["claimer_user_id"]
    assert (
        await recipients_db.fetchval("SELECT count(*) FROM invite_links WHERE sender = $1", uuid.UUID(uid(sender))) == 0
    )
    assert (await recipients_of(client, sender))[invited].get("linkedUserId", "") == ""


async def test_one_invite_for_another_claimer_is_refused_without_writing(
    client: httpx.AsyncClient, capsules: Stub, recipients_db: asyncpg.Connection
) -> None:
    sender, claimer, second = await new_user(client), await new_user(client), await new_user(client)
    invited = await entry(client, sender)
    invite = str(uuid.uuid4())
    assert await link(capsules, sender, invited, claimer, invite_id=invite) == invited
    before = await pair_state(recipients_db, sender, second)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await link(capsules, sender, invited, second, invite_id=invite)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(caught.value) == "INVITE_ALREADY_LINKED"
    assert await pair_state(recipients_db, sender, second) == before
    assert await connections_of(client, second) == []


async def test_only_the_capsules_workload_may_link(
    stack: Stack, client: httpx.AsyncClient, recipients_db: asyncpg.Connection
) -> None:
    sender, claimer = await new_user(client), await new_user(client)
    invited = await entry(client, sender)
    request = relationships_pb2.LinkInvitedUserRequest(
        invite_id=str(uuid.uuid4()),
        sender_user_id=uid(sender),
        recipient_id=invited,
        claimer_user_id=uid(claimer),
        sender_display_name="Ada",
    )
    # A user's token changes nothing: the workload is what is checked.
    token = (("authorization", f"Bearer {claimer['accessToken']}"),)
    instance = stack.addresses(RECIPIENTS.name)[0]
    for workload in ("auth", "gateway", "operator", "recipients"):
        # Through Envoy (its RBAC) and straight to an instance (the service's own check).
        async with stack.envoy_channel(workload) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as at_envoy:
                await Stub(channel).LinkInvitedUser(request, metadata=token, timeout=10)
        assert at_envoy.value.code() == grpc.StatusCode.PERMISSION_DENIED, workload
        async with stack.channel_to(instance, RECIPIENTS.name, workload) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as at_service:
                await Stub(channel).LinkInvitedUser(request, metadata=token, timeout=10)
        assert at_service.value.code() == grpc.StatusCode.PERMISSION_DENIED, workload
        assert reason_of(at_service.value) == "CALLER_NOT_ALLOWED"
    state = await pair_state(recipients_db, sender, claimer)
    assert (state["links"], state["connections"], state["a_linked"], state["b_linked"]) == (0, 0, 0, 0)

    # The capsules workload, straight to the instance too.
    async with stack.channel_to(instance, RECIPIENTS.name, "capsules") as channel:
        assert await link(Stub(channel), sender, invited, claimer) == invited


# --- races ----------------------------------------------------------------------------------------


async def test_five_parallel_links_of_one_invite_write_once(
    client: httpx.AsyncClient, capsules: Stub, recipients_db: asyncpg.Connection
) -> None:
    sender, claimer = await new_user(client), await new_user(client)
    invited = await entry(client, sender)
    invite = str(uuid.uuid4())

    answers = await asyncio.gather(*(link(capsules, sender, invited, claimer, invite_id=invite) for _ in range(5)))

    assert answers == [invited] * 5
    state = await pair_state(recipients_db, sender, claimer)
    assert (state["links"], state["connections"], state["a_linked"], state["b_linked"]) == (1, 1, 1, 1)
    assert state["recipients"] == 2
    assert await connections_of(client, sender) == [uid(claimer)]
