"""Thoughts (SPEC §13) through the gateway: the whole life (send, lists both ways, pages,
idempotent retries), every refusal with its error and no row written, the authorization matrix
(stranger, connected, blocked either way, after a disconnection), and the races (25 parallel
sends against the daily limit of 20, two parallel sends to one pair). The UTC day itself is tested
as pure functions, not by waiting for midnight."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, cast

import asyncpg
import httpx
import pytest

from launcher.stack import Stack
from services.common.db import Database
from services.common.errors import AlreadyExists, ResourceExhausted
from services.common.people import Directory
from services.common.settings import DatabaseSettings
from services.common.tokens import Caller
from services.recipients.thoughts import DAILY_LIMIT, Thoughts, next_utc_midnight, utc_day
from tests.auth.test_auth_http import assert_problem
from tests.recipients.helpers import bearer, connect, new_user, uid

# --- the UTC day, as pure functions -------------------------------------------------------------


def test_the_utc_day_turns_at_utc_midnight_whatever_the_zone() -> None:
    last = datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC)
    assert utc_day(last) == date(2026, 11, 30)
    assert utc_day(last + timedelta(microseconds=1)) == date(2026, 12, 1)
    # 01:30 in Paris (UTC+1) is still the previous day in UTC; 20:00 in New York (UTC-5) the next.
    assert utc_day(datetime(2026, 12, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))) == date(2026, 11, 30)
    assert utc_day(datetime(2026, 11, 30, 20, 0, tzinfo=timezone(timedelta(hours=-5)))) == date(2026, 12, 1)
    with pytest.raises(ValueError):
        utc_day(datetime(2026, 11, 30, 12, 0))  # no zone: no UTC day


def test_the_limits_start_over_at_the_next_utc_midnight() -> None:
    assert next_utc_midnight(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)) == datetime(2026, 12, 1, tzinfo=UTC)
    assert next_utc_midnight(datetime(2026, 12, 1, 0, 0, tzinfo=UTC)) == datetime(2026, 12, 2, tzinfo=UTC)
    # The year's last day, and a zone ahead of UTC already in the next year.
    assert next_utc_midnight(datetime(2026, 12, 31, 12, 0, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_utc_midnight(datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))) == datetime(
        2027, 1, 1, tzinfo=UTC
    )


async def test_the_days_of_the_domain_follow_its_clock(stack: Stack, recipients_db: asyncpg.Connection) -> None:
    """The domain on the stack's database with a clock set by the test: the pair rule and the daily
    count start over at UTC midnight, and the limit's retry time is that midnight."""
    a, others = uuid.uuid4(), [uuid.uuid4() for _ in range(DAILY_LIMIT + 1)]
    await recipients_db.executemany(
        "INSERT INTO connections (id, user_low, user_high) VALUES ($1, $2, $3)",
        [(uuid.uuid4(), min(a, o), max(a, o)) for o in others],
    )
    now = [datetime(2031, 3, 14, 23, 59, 30, tzinfo=UTC)]
    db = Database(DatabaseSettings(url=stack.database_urls["recipients"], pool_size=2, max_overflow=0))
    # Sending never asks the directory (only lists embed profiles).
    domain = Thoughts(db=db, directory=cast(Directory, None), clock=lambda: now[0])
    caller = Caller(user_id=a, session_id="test", token="")
    b = others[0]
    try:
        first = await domain.send(caller, str(b), None)
        now[0] = datetime(2031, 3, 14, 23, 59, 59, 999999, tzinfo=UTC)
        with pytest.raises(AlreadyExists):
            await domain.send(caller, str(b), None)
        now[0] = datetime(2031, 3, 15, 0, 0, tzinfo=UTC)  # a new UTC day: the same pair again
        second = await domain.send(caller, str(b), None)
        assert (first.created_at, second.created_at) == (
            datetime(2031, 3, 14, 23, 59, 30, tzinfo=UTC),
            datetime(2031, 3, 15, tzinfo=UTC),
        )
        days = await recipients_db.fetch("SELECT utc_day FROM thoughts WHERE sender = $1 ORDER BY utc_day", a)
        assert [r["utc_day"] for r in days] == [date(2031, 3, 14), date(2031, 3, 15)]
        # 19 more on the 15th make 20; the 21st is refused until midnight, 10 s away.
        for other in others[1:DAILY_LIMIT]:
            await domain.send(caller, str(other), None)
        now[0] = datetime(2031, 3, 15, 23, 59, 50, tzinfo=UTC)
        with pytest.raises(ResourceExhausted) as refused:
            await domain.send(caller, str(others[DAILY_LIMIT]), None)
        assert refused.value.retry_after_seconds == 10
        assert refused.value.metadata == {"retry_at": "2031-03-16T00:00:00+00:00"}
        now[0] = datetime(2031, 3, 16, tzinfo=UTC)
        await domain.send(caller, str(others[DAILY_LIMIT]), None)
    finally:
        await db.close()
        await recipients_db.execute("DELETE FROM connections WHERE user_low = $1 OR user_high = $1", a)


# --- through the gateway ---------------------------------------------------------------------


@pytest.fixture
async def recipients_db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    dsn = stack.database_urls["recipients"].replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
async def not_across_midnight() -> None:
    """A test whose sends straddle UTC midnight would see two days. Not a synchronisation: a
    guard that lets midnight pass first when it is less than a minute away."""
    now = datetime.now(UTC)
    left = (next_utc_midnight(now) - now).total_seconds()
    if left < 60:
        await asyncio.sleep(left + 1)


async def think(
    client: httpx.AsyncClient, sender: dict[str, Any], to: dict[str, Any] | str, key: str | None = None
) -> httpx.Response:
    headers = bearer(sender)
    if key is not None:
        headers["Idempotency-Key"] = key
    target = to if isinstance(to, str) else uid(to)
    return await client.post("/v1/thoughts", json={"toUserId": target}, headers=headers)


async def thoughts(
    client: httpx.AsyncClient, who: dict[str, Any], direction: str, **params: Any
) -> list[dict[str, Any]]:
    answer = await client.get("/v1/thoughts", params={"direction": direction, **params}, headers=bearer(who))
    assert answer.status_code == 200, answer.text
    return answer.json()["thoughts"]  # type: ignore[no-any-return]


async def stored(db: asyncpg.Connection, sender: dict[str, Any]) -> int:
    return int(await db.fetchval("SELECT count(*) FROM thoughts WHERE sender = $1", uuid.UUID(uid(sender))))


async def test_life_of_a_thought(client: httpx.AsyncClient, recipients_db: asyncpg.Connection) -> None:
    a, b, c = await new_user(client), await new_user(client), await new_user(client)
    await connect(client, a, b)
    await connect(client, a, c)

    sent = await think(client, a, b)
    assert sent.status_code == 200, sent.text
    thought = sent.json()
    assert thought["userId"] == uid(b)
    assert uuid.UUID(thought["id"]).version == 7
    assert abs(datetime.fromisoformat(thought["createdAt"]) - datetime.now(UTC)) < timedelta(minutes=1)

    # The receiver sees it with the sender's public profile; the sender sees it the other way.
    (incoming,) = await thoughts(client, b, "incoming")
    assert incoming["id"] == thought["id"] and incoming["userId"] == uid(a)
    assert incoming["user"]["id"] == uid(a) and incoming["user"]["username"] == a["user"]["username"]
    assert "email" not in incoming["user"]
    assert incoming["createdAt"] == thought["createdAt"]
    (outgoing,) = await thoughts(client, a, "outgoing")
    assert outgoing["id"] == thought["id"] and outgoing["userId"] == uid(b)
    assert outgoing["user"]["username"] == b["user"]["username"]
    assert await thoughts(client, a, "incoming") == [] and await thoughts(client, b, "outgoing") == []

    # One per pair per UTC day: the second is 409 and writes nothing. The other way is another pair.
    again = await think(client, a, b)
    assert_problem(again, 409, "THOUGHT_ALREADY_SENT", ["toUserId"])
    assert await stored(recipients_db, a) == 1
    back = await think(client, b, a)
    assert back.status_code == 200, back.text

    # Idempotent under Idempotency-Key: the retry returns the first thought and writes nothing.
    first = await think(client, a, c, key="thought-1")
    retry = await think(client, a, c, key="thought-1")
    assert first.status_code == retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    reused = await think(client, a, b, key="thought-1")
    assert_problem(reused, 409, "IDEMPOTENCY_KEY_REUSED", ["idempotencyKey"])
    assert await stored(recipients_db, a) == 2

    # Newest first, and pages by keyset.
    outgoing_ids = [t["id"] for t in await thoughts(client, a, "outgoing")]
    assert outgoing_ids == [first.json()["id"], thought["id"]]
    page = await client.get("/v1/thoughts", params={"direction": "outgoing", "pageSize": 1}, headers=bearer(a))
    assert [t["id"] for t in page.json()["thoughts"]] == outgoing_ids[:1]
    token = page.json()["nextPageToken"]
    rest = await thoughts(client, a, "outgoing", pageSize=1, pageToken=token)
    assert [t["id"] for t in rest] == outgoing_ids[1:]


async def test_refusals_name_the_problem_and_write_nothing(
    client: httpx.AsyncClient, recipients_db: asyncpg.Connection
) -> None:
    a, b = await new_user(client), await new_user(client)
    await connect(client, a, b)
    post = "/v1/thoughts"
    assert_problem(await think(client, a, a), 400, "SELF_THOUGHT", ["toUserId"])
    assert_problem(await client.post(post, json={}, headers=bearer(a)), 400, "INVALID_FIELDS", ["toUserId"])
    assert_problem(await think(client, a, "not-a-uuid"), 400, "INVALID_FIELDS", ["toUserId"])
    assert_problem(await think(client, a, uid(b) + "\u0000"), 400, "INVALID_FIELDS", ["toUserId"])
    assert_problem(
        await client.post(post, json={"toUserId": 5}, headers=bearer(a)), 400, "INVALID_FIELDS", ["toUserId"]
    )
    assert_problem(await think(client, a, b, key="k" * 201), 400, "INVALID_FIELDS", ["idempotencyKey"])
    assert_problem(await think(client, a, str(uuid.uuid4())), 404, "NOT_FOUND", ["toUserId"])
    anonymous = await client.post(post, json={"toUserId": uid(b)})
    assert_problem(anonymous, 401, "UNAUTHENTICATED")
    assert await stored(recipients_db, a) == 0

    # The list needs a direction, one of the two.
    get = "/v1/thoughts"
    assert_problem(await client.get(get, headers=bearer(a)), 400, "INVALID_FIELDS", ["direction"])
    for bad in ("sideways", "7", "THOUGHT_DIRECTION_UNSPECIFIED"):
        answer = await client.get(get, params={"direction": bad}, headers=bearer(a))
        assert_problem(answer, 400, "INVALID_FIELDS", ["direction"])
    negative = await client.get(get, params={"direction": "incoming", "pageSize": -1}, headers=bearer(a))
    assert_problem(negative, 400, "INVALID_FIELDS", ["pageSize"])
    assert_problem(await client.get(get, params={"direction": "incoming"}), 401, "UNAUTHENTICATED")

    # Page tokens: only the same list for the same caller.
    for other in [await new_user(client) for _ in range(2)]:
        await connect(client, a, other)
        assert (await think(client, a, other)).status_code == 200
    page = await client.get(get, params={"direction": "outgoing", "pageSize": 1}, headers=bearer(a))
    token = page.json()["nextPageToken"]
    assert token
    for who, direction in ((a, "incoming"), (b, "outgoing")):
        answer = await client.get(get, params={"direction": direction, "pageToken": token}, headers=bearer(who))
        assert_problem(answer, 400, "MALFORMED_PAGE_TOKEN", ["pageToken"])
    forged = await client.get(get, params={"direction": "outgoing", "pageToken": token[:-2]}, headers=bearer(a))
    assert_problem(forged, 400, "MALFORMED_PAGE_TOKEN", ["pageToken"])


async def test_authorization_matrix(client: httpx.AsyncClient, recipients_db: asyncpg.Connection) -> None:
    """Only a connection with no block either way receives a thought; every other target answers
    exactly like an unknown user, so the sender learns nothing (SPEC §3)."""
    a, b, stranger, blocker, blocked, gone = [await new_user(client) for _ in range(6)]
    for other in (b, blocker, blocked, gone):
        await connect(client, a, other)
    # `blocker` blocks A; A blocks `blocked`; A and `gone` disconnect.
    assert (await client.post("/v1/blocks", json={"userId": uid(a)}, headers=bearer(blocker))).status_code == 200
    assert (await client.post("/v1/blocks", json={"userId": uid(blocked)}, headers=bearer(a))).status_code == 200
    assert (await client.delete(f"/v1/connections/{uid(gone)}", headers=bearer(a))).status_code == 200

    unknown = (await think(client, a, str(uuid.uuid4()))).json()
    for target in (stranger, blocker, blocked, gone):
        refused = await think(client, a, target)
        assert_problem(refused, 404, "NOT_FOUND", ["toUserId"])
        assert refused.json() == unknown
        # Nor the other way round.
        assert_problem(await think(client, target, a), 404, "NOT_FOUND", ["toUserId"])
    assert await stored(recipients_db, a) == 0

    # Unblocking restores nothing: still not connected.
    assert (await client.delete(f"/v1/blocks/{uid(blocked)}", headers=bearer(a))).status_code == 200
    assert_problem(await think(client, a, blocked), 404, "NOT_FOUND", ["toUserId"])

    # The connected user receives it; nobody else sees it in either list.
    assert (await think(client, a, b)).status_code == 200
    assert [t["userId"] for t in await thoughts(client, b, "incoming")] == [uid(a)]
    for other in (stranger, blocker, blocked, gone):
        assert await thoughts(client, other, "incoming") == []
        assert await thoughts(client, other, "outgoing") == []

    # A block after the thought: the thought stays in the lists (history), new ones are refused.
    assert (await client.post("/v1/blocks", json={"userId": uid(a)}, headers=bearer(b))).status_code == 200
    assert_problem(await think(client, b, a), 404, "NOT_FOUND", ["toUserId"])
    assert await stored(recipients_db, a) == 1


async def test_the_daily_limit_holds_under_parallel_sends(
    client: httpx.AsyncClient, recipients_db: asyncpg.Connection
) -> None:
    sender = await new_user(client)
    others = list(await asyncio.gather(*(new_user(client) for _ in range(DAILY_LIMIT + 5))))
    # Each of them asks the sender (the sender could not ask 25 people: 5 requests per 24 h).
    await asyncio.gather(*(connect(client, other, sender) for other in others))

    answers = await asyncio.gather(*(think(client, sender, other) for other in others))
    codes = Counter(r.status_code for r in answers)
    assert codes == {200: DAILY_LIMIT, 429: 5}, codes
    assert await stored(recipients_db, sender) == DAILY_LIMIT
    now = datetime.now(UTC)
    to_midnight = math.ceil((next_utc_midnight(now) - now).total_seconds())
    for refused in (r for r in answers if r.status_code == 429):
        assert_problem(refused, 429, "THOUGHT_LIMIT_REACHED")
        assert abs(int(refused.headers["Retry-After"]) - to_midnight) <= 60, refused.headers

    # Every stored one is listed once, newest first, over pages.
    seen: list[str] = []
    token = ""
    while True:
        params: dict[str, str | int] = {"direction": "outgoing", "pageSize": 7}
        if token:
            params["pageToken"] = token
        page = (await client.get("/v1/thoughts", params=params, headers=bearer(sender))).json()
        seen += [t["id"] for t in page["thoughts"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert len(seen) == len(set(seen)) == DAILY_LIMIT
    assert seen == sorted(seen, reverse=True)

    # The pair rule is checked before the limit; a retry with a key past the limit is still 429.
    accepted = next(o for o, r in zip(others, answers, strict=True) if r.status_code == 200)
    assert_problem(await think(client, sender, accepted), 409, "THOUGHT_ALREADY_SENT", ["toUserId"])
    late = next(o for o, r in zip(others, answers, strict=True) if r.status_code == 429)
    assert_problem(await think(client, sender, late, key="late"), 429, "THOUGHT_LIMIT_REACHED")
    assert await stored(recipients_db, sender) == DAILY_LIMIT


async def test_two_parallel_sends_to_one_pair_store_one(
    client: httpx.AsyncClient, recipients_db: asyncpg.Connection
) -> None:
    a, b = await new_user(client), await new_user(client)
    await connect(client, a, b)
    answers = await asyncio.gather(think(client, a, b), think(client, a, b))
    assert Counter(r.status_code for r in answers) == {200: 1, 409: 1}, [r.text for r in answers]
    assert_problem(next(r for r in answers if r.status_code == 409), 409, "THOUGHT_ALREADY_SENT", ["toUserId"])
    assert await stored(recipients_db, a) == 1
    assert len(await thoughts(client, b, "incoming")) == 1
