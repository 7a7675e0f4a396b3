"""The rules hold under concurrent calls (checked inside the transaction, under locks, with unique
indexes behind them): 20 identical requests in parallel leave one pending request, 20 parallel
accepts one connection, crossing requests in parallel one connection, and the 5-per-24 h limit
cannot be overrun by sending to many people at once."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from tests.recipients.helpers import ask, bearer, new_user, uid


async def test_twenty_identical_requests_leave_one_pending(client: httpx.AsyncClient) -> None:
    a, b = await new_user(client), await new_user(client)
    answers = await asyncio.gather(*(ask(client, a, b) for _ in range(20)))
    codes = Counter(r.status_code for r in answers)
    assert codes == {200: 1, 409: 19}, codes
    assert all(r.json()["reason"] == "REQUEST_PENDING" for r in answers if r.status_code == 409)
    incoming = (await client.get("/v1/connection-requests", headers=bearer(b))).json()["connectionRequests"]
    assert len(incoming) == 1


async def test_twenty_parallel_accepts_make_one_connection(client: httpx.AsyncClient) -> None:
    a, b = await new_user(client), await new_user(client)
    request = (await ask(client, a, b)).json()
    answers = await asyncio.gather(
        *(client.post(f"/v1/connection-requests/{request['id']}:accept", headers=bearer(b)) for _ in range(20))
    )
    codes = Counter(r.status_code for r in answers)
    assert codes == {200: 1, 400: 19}, codes
    for who, other in ((a, b), (b, a)):
        connections = (await client.get("/v1/connections", headers=bearer(who))).json()["connections"]
        assert [c["userId"] for c in connections] == [uid(other)]
        recipients = (await client.get("/v1/recipients", headers=bearer(who))).json()["recipients"]
        assert [r["linkedUserId"] for r in recipients] == [uid(other)]


async def test_parallel_crossing_requests_make_one_connection(client: httpx.AsyncClient) -> None:
    a, b = await new_user(client), await new_user(client)
    answers = await asyncio.gather(*(ask(client, x, y) for x, y in [(a, b), (b, a)] * 10))
    assert all(r.status_code in (200, 409) for r in answers), [r.text for r in answers]
    connections = (await client.get("/v1/connections", headers=bearer(a))).json()["connections"]
    assert [c["userId"] for c in connections] == [uid(b)]
    assert (await client.get("/v1/connection-requests", headers=bearer(a))).json()["connectionRequests"] == []


async def test_the_daily_limit_holds_under_parallel_sends(client: httpx.AsyncClient) -> None:
    sender = await new_user(client)
    others = [await new_user(client) for _ in range(12)]
    answers = await asyncio.gather(*(ask(client, sender, other) for other in others))
    codes = Counter(r.status_code for r in answers)
    assert codes == {200: 5, 429: 7}, codes
    outgoing = await client.get("/v1/connection-requests", params={"direction": "outgoing"}, headers=bearer(sender))
    assert len(outgoing.json()["connectionRequests"]) == 5
