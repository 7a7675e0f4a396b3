"""Authorization matrix: for every route of the recipients service, a third user gets NOT_FOUND
(never someone else's data) and an anonymous caller gets 401."""

from __future__ import annotations

from typing import Any

import httpx

from tests.auth.test_auth_http import assert_problem
from tests.recipients.helpers import ask, bearer, connect, new_user, uid


async def make_world(client: httpx.AsyncClient) -> dict[str, Any]:
    a, b, c, d, e = [await new_user(client) for _ in range(5)]
    await connect(client, a, b)
    pending = (await ask(client, a, c)).json()
    recipient = (
        await client.post("/v1/recipients", json={"name": "Aunt May", "email": "may@example.com"}, headers=bearer(a))
    ).json()
    await client.post("/v1/blocks", json={"userId": uid(e)}, headers=bearer(a))
    return {"a": a, "b": b, "c": c, "d": d, "e": e, "pending": pending, "recipient": recipient}


def routes(w: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every route, aimed at A's things (or at the request between A and C)."""
    rid, req = w["recipient"]["id"], w["pending"]["id"]
    return [
        ("POST", "/v1/connection-requests", {"toUserId": uid(w["b"])}),
        ("GET", "/v1/connection-requests", None),
        ("POST", f"/v1/connection-requests/{req}:accept", {}),
        ("POST", f"/v1/connection-requests/{req}:decline", {"reason": "no"}),
        ("POST", f"/v1/connection-requests/{req}:cancel", {}),
        ("GET", "/v1/connections", None),
        ("DELETE", f"/v1/connections/{uid(w['b'])}", None),
        ("GET", "/v1/blocks", None),
        ("POST", "/v1/blocks", {"userId": uid(w["b"])}),
        ("DELETE", f"/v1/blocks/{uid(w['e'])}", None),
        ("GET", "/v1/recipients", None),
        ("POST", "/v1/recipients", {"name": "x"}),
        ("GET", f"/v1/recipients/{rid}", None),
        ("PATCH", f"/v1/recipients/{rid}", {"name": "Stolen"}),
        ("DELETE", f"/v1/recipients/{rid}", None),
    ]


async def test_anonymous_callers_get_401_on_every_route(client: httpx.AsyncClient) -> None:
    w = await make_world(client)
    for method, path, body in routes(w):
        response = await client.request(method, path, json=body)
        assert_problem(response, 401, "UNAUTHENTICATED")
        bad = await client.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401, (method, path)


async def test_a_third_user_gets_404_and_never_sees_anyone_elses_data(client: httpx.AsyncClient) -> None:
    w = await make_world(client)
    d = bearer(w["d"])
    rid, req = w["recipient"]["id"], w["pending"]["id"]
    # Acting on A's things: not found, as if they did not exist.
    for method, path, body in [
        ("POST", f"/v1/connection-requests/{req}:accept", {}),
        ("POST", f"/v1/connection-requests/{req}:decline", {"reason": "no"}),
        ("POST", f"/v1/connection-requests/{req}:cancel", {}),
        ("DELETE", f"/v1/connections/{uid(w['b'])}", None),
        ("GET", f"/v1/recipients/{rid}", None),
        ("PATCH", f"/v1/recipients/{rid}", {"name": "Stolen"}),
        ("DELETE", f"/v1/recipients/{rid}", None),
    ]:
        response = await client.request(method, path, json=body, headers=d)
        assert_problem(response, 404, "NOT_FOUND")
        assert uid(w["a"]) not in response.text
    # The lists are D's own (empty), never A's.
    for path, key in [
        ("/v1/connection-requests?direction=incoming", "connectionRequests"),
        ("/v1/connection-requests?direction=outgoing", "connectionRequests"),
        ("/v1/connections", "connections"),
        ("/v1/blocks", "blocks"),
        ("/v1/recipients", "recipients"),
    ]:
        response = await client.get(path, headers=d)
        assert response.status_code == 200 and response.json()[key] == [], (path, response.text)
    # Unblocking someone else's block is a no-op for D: A's block stands.
    assert (await client.delete(f"/v1/blocks/{uid(w['e'])}", headers=d)).status_code == 200
    assert [x["userId"] for x in (await client.get("/v1/blocks", headers=bearer(w["a"]))).json()["blocks"]] == [
        uid(w["e"])
    ]
    # And nothing of A's changed.
    mine = await client.get(f"/v1/recipients/{rid}", headers=bearer(w["a"]))
    assert mine.json()["name"] == "Aunt May"
    assert (await client.get("/v1/connection-requests", headers=bearer(w["c"]))).json()["connectionRequests"][0][
        "status"
    ] == "CONNECTION_REQUEST_STATUS_PENDING"
    # The addressee may not cancel, the sender may not accept or decline.
    for who, verb in ((w["c"], "cancel"), (w["a"], "accept"), (w["a"], "decline")):
        response = await client.post(f"/v1/connection-requests/{req}:{verb}", json={}, headers=bearer(who))
        assert_problem(response, 404, "NOT_FOUND")
