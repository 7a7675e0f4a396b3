"""The whole life of a connection through the gateway (SPEC §5, §8): ask, accept, decline and the
7-day cool-down, cancel, the 6th request in 24 h, crossing requests, remove, block and unblock,
bad input, idempotency keys."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.auth.test_auth_http import assert_problem
from tests.recipients.helpers import ask, bearer, connect, new_user, uid

pytestmark = pytest.mark.slow(8)  # scheduled first: see tests/conftest.py

PENDING = "CONNECTION_REQUEST_STATUS_PENDING"
ACCEPTED = "CONNECTION_REQUEST_STATUS_ACCEPTED"


async def listed(client: httpx.AsyncClient, path: str, who: dict[str, Any], key: str, **params: Any) -> list[Any]:
    response = await client.get(path, params=params, headers=bearer(who))
    assert response.status_code == 200, response.text
    return response.json()[key]  # type: ignore[no-any-return]


async def connection_ids(client: httpx.AsyncClient, who: dict[str, Any]) -> set[str]:
    return {c["userId"] for c in await listed(client, "/v1/connections", who, "connections")}


async def linked(client: httpx.AsyncClient, who: dict[str, Any]) -> dict[str, str]:
    rows = await listed(client, "/v1/recipients", who, "recipients", pageSize=100)
    return {r["linkedUserId"]: r["name"] for r in rows if r["linkedUserId"]}


async def test_ask_accept_and_both_see_each_other(client: httpx.AsyncClient) -> None:
    a = await new_user(client, firstName="Ada", lastName="Lovelace")
    b = await new_user(client, firstName="Charles", lastName="Babbage")
    sent = await ask(client, a, b, "  hello  ")
    assert sent.status_code == 200, sent.text
    request = sent.json()
    assert request["status"] == PENDING and request["message"] == "hello"
    assert (request["fromUserId"], request["toUserId"]) == (uid(a), uid(b))
    assert uuid.UUID(request["id"]).version == 7

    incoming = await listed(client, "/v1/connection-requests", b, "connectionRequests", direction="incoming")
    assert [r["id"] for r in incoming] == [request["id"]]
    outgoing = await listed(client, "/v1/connection-requests", a, "connectionRequests", direction="outgoing")
    assert [r["id"] for r in outgoing] == [request["id"]]
    assert await listed(client, "/v1/connection-requests", a, "connectionRequests", direction="incoming") == []

    accepted = await client.post(f"/v1/connection-requests/{request['id']}:accept", headers=bearer(b))
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == ACCEPTED and accepted.json()["respondedAt"]

    connections = await listed(client, "/v1/connections", a, "connections")
    assert [c["userId"] for c in connections] == [uid(b)]
    profile = connections[0]["user"]
    assert profile["id"] == uid(b) and profile["firstName"] == "Charles" and "email" not in profile
    assert connections[0]["id"]
    assert await connection_ids(client, b) == {uid(a)}
    assert await linked(client, a) == {uid(b): "Charles Babbage"}
    assert await linked(client, b) == {uid(a): "Ada Lovelace"}
    # Nothing pending any more; a second accept changes nothing.
    assert await listed(client, "/v1/connection-requests", b, "connectionRequests") == []
    again = await client.post(f"/v1/connection-requests/{request['id']}:accept", headers=bearer(b))
    assert_problem(again, 400, "REQUEST_NOT_PENDING")
    # Asking again once connected is refused.
    assert_problem(await ask(client, a, b), 409, "ALREADY_CONNECTED", ["toUserId"])
    assert_problem(await ask(client, b, a), 409, "ALREADY_CONNECTED", ["toUserId"])


async def test_accept_links_an_existing_recipient_instead_of_adding_one(client: httpx.AsyncClient) -> None:
    a = await new_user(client, firstName="Ada")
    b = await new_user(client, firstName="Bob")
    await connect(client, a, b)
    # Remove, then reconnect: the linked recipients stay and are reused, not duplicated.
    assert (await client.delete(f"/v1/connections/{uid(b)}", headers=bearer(a))).status_code == 200
    renamed = await listed(client, "/v1/recipients", a, "recipients")
    rid = renamed[0]["id"]
    patched = await client.patch(f"/v1/recipients/{rid}", json={"name": "Bobby"}, headers=bearer(a))
    assert patched.status_code == 200, patched.text
    await connect(client, b, a)
    assert await linked(client, a) == {uid(b): "Bobby"}
    assert len(await listed(client, "/v1/recipients", b, "recipients")) == 1


async def test_decline_then_seven_day_cool_down(client: httpx.AsyncClient) -> None:
    a, b = await new_user(client), await new_user(client)
    request = (await ask(client, a, b)).json()
    declined = await client.post(
        f"/v1/connection-requests/{request['id']}:decline", json={"reason": "not now"}, headers=bearer(b)
    )
    assert declined.status_code == 200, declined.text
    assert declined.json()["status"] == "CONNECTION_REQUEST_STATUS_DECLINED"
    assert declined.json()["declineReason"] == "not now"
    assert await connection_ids(client, a) == set()
    refused = await ask(client, a, b)
    assert_problem(refused, 400, "COOL_DOWN")
    assert "after" in refused.json()["detail"]
    # The cool-down binds the declined sender only: the addressee may still ask.
    back = await ask(client, b, a)
    assert back.status_code == 200, back.text
    # Only pending requests change.
    again = await client.post(f"/v1/connection-requests/{request['id']}:decline", json={}, headers=bearer(b))
    assert_problem(again, 400, "REQUEST_NOT_PENDING")


async def test_decline_reason_is_limited(client: httpx.AsyncClient) -> None:
    a, b = await new_user(client), await new_user(client)
    request = (await ask(client, a, b)).json()
    response = await client.post(
        f"/v1/connection-requests/{request['id']}:decline", json={"reason": "x" * 501}, headers=bearer(b)
    )
    assert_problem(response, 400, "INVALID_FIELDS", ["reason"])


async def test_cancel_by_the_sender_only(client: httpx.AsyncClient) -> None:
    a, b = await new_user(client), await new_user(client)
    request = (await ask(client, a, b)).json()
    not_theirs = await client.post(f"/v1/connection-requests/{request['id']}:cancel", headers=bearer(b))
    assert_problem(not_theirs, 404, "NOT_FOUND")
    not_mine = await client.post(f"/v1/connection-requests/{request['id']}:accept", headers=bearer(a))
    assert_problem(not_mine, 404, "NOT_FOUND")
    cancelled = await client.post(f"/v1/connection-requests/{request['id']}:cancel", headers=bearer(a))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CONNECTION_REQUEST_STATUS_CANCELLED"
    assert await listed(client, "/v1/connection-requests", b, "connectionRequests") == []
    late = await client.post(f"/v1/connection-requests/{request['id']}:accept", headers=bearer(b))
    assert_problem(late, 400, "REQUEST_NOT_PENDING")
    # A cancelled request does not stand in the way of a new one.
    assert (await ask(client, a, b)).status_code == 200


async def test_pending_request_blocks_a_second_one(client: httpx.AsyncClient) -> None:
    a, b = await new_user(client), await new_user(client)
    assert (await ask(client, a, b)).status_code == 200
    assert_problem(await ask(client, a, b), 409, "REQUEST_PENDING", ["toUserId"])


async def test_sixth_request_in_24_hours_is_refused(client: httpx.AsyncClient) -> None:
    sender = await new_user(client)
    others = [await new_user(client) for _ in range(6)]
    for other in others[:3]:
        assert (await ask(client, sender, other)).status_code == 200
    # Cancelled requests still count: cancel-and-resend cannot get around the limit.
    outgoing = await listed(client, "/v1/connection-requests", sender, "connectionRequests", direction="outgoing")
    await client.post(f"/v1/connection-requests/{outgoing[0]['id']}:cancel", headers=bearer(sender))
    for other in others[3:5]:
        assert (await ask(client, sender, other)).status_code == 200
    refused = await ask(client, sender, others[5])
    assert_problem(refused, 429, "REQUEST_LIMIT_REACHED")
    assert "5 connection requests per 24 hours" in refused.json()["detail"]
    # Crossing requests accept the other side's request: no new request, so not limited.
    crossing = await ask(client, others[5], sender)
    assert crossing.status_code == 200
    accepted = await ask(client, sender, others[5])
    assert accepted.status_code == 200 and accepted.json()["status"] == ACCEPTED


async def test_crossing_requests_accept_each_other(client: httpx.AsyncClient) -> None:
    a, b = await new_user(client, firstName="Ann"), await new_user(client, firstName="Ben")
    first = (await ask(client, a, b)).json()
    second = await ask(client, b, a)
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first["id"] and second.json()["status"] == ACCEPTED
    assert await connection_ids(client, a) == {uid(b)} and await connection_ids(client, b) == {uid(a)}
    assert await linked(client, a) == {uid(b): "Ben"} and await linked(client, b) == {uid(a): "Ann"}
    assert await listed(client, "/v1/connection-requests", a, "connectionRequests", direction="outgoing") == []


async def test_remove_connection_from_either_side_keeps_recipients(client: httpx.AsyncClient) -> None:
    a, b = await new_user(client), await new_user(client)
    await connect(client, a, b)
    removed = await client.delete(f"/v1/connections/{uid(a)}", headers=bearer(b))
    assert removed.status_code == 200, removed.text
    assert await connection_ids(client, a) == set() and await connection_ids(client, b) == set()
    assert uid(b) in await linked(client, a) and uid(a) in await linked(client, b)
    gone = await client.delete(f"/v1/connections/{uid(a)}", headers=bearer(b))
    assert_problem(gone, 404, "NOT_FOUND")
    # They may connect again.
    await connect(client, b, a)
    assert await connection_ids(client, a) == {uid(b)}


async def test_block_hides_and_refuses_both_ways_and_tells_the_blocked_nothing(client: httpx.AsyncClient) -> None:
    tag = "blk" + uuid.uuid4().hex[:6]
    a = await new_user(client, lastName=tag)
    b = await new_user(client, lastName=tag)
    c = await new_user(client, lastName=tag)
    await connect(client, a, b)
    assert (await ask(client, b, c)).status_code == 200
    pending = (await ask(client, c, a)).json()

    async def found_by(who: dict[str, Any]) -> set[str]:
        response = await client.get("/v1/users:search", params={"query": tag}, headers=bearer(who))
        assert response.status_code == 200, response.text
        return {u["id"] for u in response.json()["users"]}

    assert await found_by(a) == {uid(b), uid(c)}
    blocked = await client.post("/v1/blocks", json={"userId": uid(b)}, headers=bearer(a))
    assert blocked.status_code == 200, blocked.text
    assert blocked.json()["userId"] == uid(b) and blocked.json()["id"]
    # Idempotent: the same block again is the same block.
    again = await client.post("/v1/blocks", json={"userId": uid(b)}, headers=bearer(a))
    assert again.json()["id"] == blocked.json()["id"]
    a_to_c = await client.post("/v1/blocks", json={"userId": uid(c)}, headers=bearer(a))
    assert a_to_c.status_code == 200

    # The connection and the pending requests are gone, both ways.
    assert await connection_ids(client, a) == set() and await connection_ids(client, b) == set()
    assert await listed(client, "/v1/connection-requests", a, "connectionRequests") == []
    late = await client.post(f"/v1/connection-requests/{pending['id']}:accept", headers=bearer(a))
    assert_problem(late, 400, "REQUEST_NOT_PENDING")
    # Search hides each from the other, whoever blocked.
    assert await found_by(a) == set()
    assert uid(a) not in await found_by(b) and uid(a) not in await found_by(c)
    assert uid(c) in await found_by(b)
    # Requests both ways are answered exactly like a request to nobody.
    nobody = await ask(client, b, str(uuid.uuid4()))
    assert_problem(nobody, 404, "NOT_FOUND", ["toUserId"])
    for sender, addressee in ((b, a), (a, b)):
        refused = await ask(client, sender, addressee)
        assert_problem(refused, 404, "NOT_FOUND", ["toUserId"])
        assert refused.json()["detail"] == nobody.json()["detail"]
        assert refused.json()["fieldViolations"] == nobody.json()["fieldViolations"]
    # Only the blocker's list shows the block.
    assert [x["userId"] for x in await listed(client, "/v1/blocks", a, "blocks")] == [uid(c), uid(b)]
    assert await listed(client, "/v1/blocks", b, "blocks") == []

    # Unblock restores nothing, but requests work again.
    assert (await client.delete(f"/v1/blocks/{uid(b)}", headers=bearer(a))).status_code == 200
    assert (await client.delete(f"/v1/blocks/{uid(b)}", headers=bearer(a))).status_code == 200  # idempotent
    assert await connection_ids(client, a) == set()
    assert await found_by(a) == {uid(b)}
    assert (await ask(client, b, a)).status_code == 200


async def test_block_refusals(client: httpx.AsyncClient) -> None:
    a = await new_user(client)
    assert_problem(await client.post("/v1/blocks", json={}, headers=bearer(a)), 400, "INVALID_FIELDS", ["userId"])
    assert_problem(
        await client.post("/v1/blocks", json={"userId": uid(a)}, headers=bearer(a)), 400, "INVALID_FIELDS", ["userId"]
    )
    assert_problem(
        await client.post("/v1/blocks", json={"userId": str(uuid.uuid4())}, headers=bearer(a)), 404, "NOT_FOUND"
    )


async def test_bad_input_names_the_field(client: httpx.AsyncClient) -> None:
    a = await new_user(client)
    b = await new_user(client)
    missing = await client.post("/v1/connection-requests", json={"message": "hi"}, headers=bearer(a))
    assert_problem(missing, 400, "INVALID_FIELDS", ["toUserId"])
    malformed = await ask(client, a, "not-a-uuid")
    assert_problem(malformed, 400, "INVALID_FIELDS", ["toUserId"])
    too_long = await ask(client, a, b, "x" * 501)
    assert_problem(too_long, 400, "INVALID_FIELDS", ["message"])
    both = await client.post("/v1/connection-requests", json={"toUserId": "x", "message": "y" * 501}, headers=bearer(a))
    assert_problem(both, 400, "INVALID_FIELDS", ["toUserId", "message"])
    self_request = await ask(client, a, a)
    assert_problem(self_request, 400, "SELF_REQUEST", ["toUserId"])
    wrong_type = await client.post("/v1/connection-requests", json={"toUserId": 5}, headers=bearer(a))
    assert wrong_type.status_code == 400
    bad_direction = await client.get("/v1/connection-requests", params={"direction": "sideways"}, headers=bearer(a))
    assert bad_direction.status_code == 400
    bad_id = await client.post("/v1/connection-requests/nope:accept", headers=bearer(a))
    assert_problem(bad_id, 400, "INVALID_FIELDS", ["id"])
    bad_token = await client.get("/v1/connections", params={"pageToken": "garbage"}, headers=bearer(a))
    assert_problem(bad_token, 400, "MALFORMED_PAGE_TOKEN", ["pageToken"])
    negative = await client.get("/v1/blocks", params={"pageSize": -1}, headers=bearer(a))
    assert_problem(negative, 400, "INVALID_FIELDS", ["pageSize"])


async def test_idempotency_key_returns_the_first_result(client: httpx.AsyncClient) -> None:
    a, b, c = await new_user(client), await new_user(client), await new_user(client)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"toUserId": uid(b), "message": "once"}
    first = await client.post("/v1/connection-requests", json=body, headers={**bearer(a), **key})
    second = await client.post("/v1/connection-requests", json=body, headers={**bearer(a), **key})
    assert first.status_code == second.status_code == 200, second.text
    assert first.json()["id"] == second.json()["id"]
    outgoing = await listed(client, "/v1/connection-requests", a, "connectionRequests", direction="outgoing")
    assert len(outgoing) == 1
    other = await client.post("/v1/connection-requests", json={"toUserId": uid(c)}, headers={**bearer(a), **key})
    assert_problem(other, 409, "IDEMPOTENCY_KEY_REUSED")


async def test_paging_of_requests_and_connections(client: httpx.AsyncClient) -> None:
    hub = await new_user(client)
    spokes = [await new_user(client) for _ in range(5)]
    for spoke in spokes:
        assert (await ask(client, spoke, hub)).status_code == 200
    seen: list[str] = []
    token = ""
    while True:
        response = await client.get(
            "/v1/connection-requests", params={"pageSize": 2, "pageToken": token}, headers=bearer(hub)
        )
        page = response.json()
        seen += [r["fromUserId"] for r in page["connectionRequests"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert seen == [uid(s) for s in reversed(spokes)]  # newest first, no duplicates, no gaps
    for request in (await client.get("/v1/connection-requests", headers=bearer(hub))).json()["connectionRequests"]:
        await client.post(f"/v1/connection-requests/{request['id']}:accept", headers=bearer(hub))
    first = (await client.get("/v1/connections", params={"pageSize": 3}, headers=bearer(hub))).json()
    params = {"pageSize": 3, "pageToken": first["nextPageToken"]}
    rest = (await client.get("/v1/connections", params=params, headers=bearer(hub))).json()
    assert rest["nextPageToken"] == ""
    ids = [c["userId"] for c in first["connections"] + rest["connections"]]
    assert sorted(ids) == sorted(uid(s) for s in spokes) and len(set(ids)) == 5
    assert all(c["user"]["id"] == c["userId"] for c in first["connections"] + rest["connections"])
