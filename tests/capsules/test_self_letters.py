"""Self letters (SPEC §13) through the gateway: the whole life (sealed, body withheld, open refused
then allowed, one answer), every refusal with its field and nothing written, the author-only
matrix, idempotent creation, keyset pages, and two answers at once.

The session stack lets a letter open CAPSULE_LEAD_SECONDS after it is written (the capsules'
minimum lead, which self letters share), so the life test sees it become readable."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.capsules.helpers import assert_problem, at, bearer, eventually, new_user, uid
from tests.conftest import CAPSULE_LEAD_SECONDS

pytestmark = pytest.mark.slow(6)  # the life test waits for opens_at: see tests/conftest.py

BODY = "Dear future me, did you keep running?"  # 36 characters


async def write(
    api: httpx.AsyncClient, author: dict[str, Any], *, key: str | None = None, **fields: Any
) -> httpx.Response:
    body = {
        "title": "a note",
        "body": BODY,
        "mood": "🙂 hopeful",
        "lifeArea": "health",
        "city": "Lisbon",
        "opensAt": at(3600),
        **fields,
    }
    body = {name: value for name, value in body.items() if value is not None}  # None: left out
    headers = bearer(author)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await api.post("/v1/self-letters", json=body, headers=headers)


async def listed(api: httpx.AsyncClient, who: dict[str, Any], **params: Any) -> dict[str, Any]:
    response = await api.get("/v1/self-letters", params=params, headers=bearer(who))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def rows_of(db: asyncpg.Connection, author: dict[str, Any]) -> int:
    return int(await db.fetchval("SELECT count(*) FROM self_letters WHERE author = $1::uuid", uid(author)))


async def opened_letter(db: asyncpg.Connection, author: dict[str, Any]) -> str:
    """A letter of `author` whose opens_at has passed and that they opened (written directly: the
    races below are about answering, not about waiting for the clock)."""
    letter = uuid.uuid4()
    await db.execute(
        "INSERT INTO self_letters (id, author, body, life_area, opens_at, opened_at) "
        "VALUES ($1, $2::uuid, $3, 'self', now() - interval '1 hour', now() - interval '1 minute')",
        letter,
        uid(author),
        BODY,
    )
    return str(letter)


# --- the whole life ---------------------------------------------------------------------------------


async def test_sealed_then_readable_opened_once_answered_once(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    a = await new_user(api)
    created = await write(api, a, title="to me", opensAt=at(CAPSULE_LEAD_SECONDS + 2))
    assert created.status_code == 200, created.text
    letter = created.json()
    lid = letter["id"]
    assert uuid.UUID(lid).version == 7 and letter["authorId"] == uid(a)
    assert letter["status"] == "SELF_LETTER_STATUS_SEALED"
    assert letter["body"] == ""  # withheld until opensAt, even from the author who just wrote it
    assert letter["title"] == "to me" and letter["mood"] == "🙂 hopeful" and letter["city"] == "Lisbon"
    assert letter["lifeArea"] == "LIFE_AREA_HEALTH"
    assert letter["reflection"] == "REFLECTION_ANSWER_UNSPECIFIED" and not letter.get("openedAt")

    # The list and a read show it without its body; opening and answering are refused.
    page = await listed(api, a)
    assert [r["id"] for r in page["selfLetters"]] == [lid] and page["nextPageToken"] == ""
    assert page["selfLetters"][0]["body"] == "" and page["selfLetters"][0]["status"] == "SELF_LETTER_STATUS_SEALED"
    got = await api.get(f"/v1/self-letters/{lid}", headers=bearer(a))
    assert got.status_code == 200 and got.json()["body"] == ""
    sealed = await api.post(f"/v1/self-letters/{lid}:open", json={}, headers=bearer(a))
    assert_problem(sealed, 400, "SELF_LETTER_SEALED")
    early = await api.post(f"/v1/self-letters/{lid}:reflect", json={"answer": "yes"}, headers=bearer(a))
    assert_problem(early, 400, "SELF_LETTER_NOT_OPENED")
    row = await capsules_db.fetchrow("SELECT opened_at, reflection FROM self_letters WHERE id = $1::uuid", lid)
    assert row["opened_at"] is None and row["reflection"] is None

    # From opensAt: readable (in the list too), not yet opened.
    async def ready() -> dict[str, Any] | None:
        response = await api.get(f"/v1/self-letters/{lid}", headers=bearer(a))
        assert response.status_code == 200, response.text
        body = response.json()
        return dict(body) if body["status"] == "SELF_LETTER_STATUS_READY" else None

    assert (await eventually(ready))["body"] == BODY
    assert (await listed(api, a))["selfLetters"][0]["body"] == BODY

    # Opened once: a second open returns the same moment and writes nothing.
    opened = await api.post(f"/v1/self-letters/{lid}:open", json={}, headers=bearer(a))
    assert opened.status_code == 200, opened.text
    assert opened.json()["status"] == "SELF_LETTER_STATUS_OPENED" and opened.json()["body"] == BODY
    first_open = opened.json()["openedAt"]
    assert first_open
    again = await api.post(f"/v1/self-letters/{lid}:open", json={}, headers=bearer(a))
    assert again.status_code == 200 and again.json()["openedAt"] == first_open

    # One answer; a second one (even the same) is 409 and the first stands.
    answered = await api.post(f"/v1/self-letters/{lid}:reflect", json={"answer": "yes"}, headers=bearer(a))
    assert answered.status_code == 200, answered.text
    assert answered.json()["reflection"] == "REFLECTION_ANSWER_YES" and answered.json()["reflectedAt"]
    for answer in ("no", "yes"):
        second = await api.post(f"/v1/self-letters/{lid}:reflect", json={"answer": answer}, headers=bearer(a))
        assert_problem(second, 409, "SELF_LETTER_ALREADY_REFLECTED")
    row = await capsules_db.fetchrow("SELECT reflection, reflected_at FROM self_letters WHERE id = $1::uuid", lid)
    assert row["reflection"] == "yes"
    shown = (await listed(api, a))["selfLetters"][0]
    assert shown["reflection"] == "REFLECTION_ANSWER_YES" and shown["openedAt"] == first_open
    assert await rows_of(capsules_db, a) == 1


async def test_skipped_is_an_answer(api: httpx.AsyncClient, capsules_db: asyncpg.Connection) -> None:
    a = await new_user(api)
    lid = await opened_letter(capsules_db, a)
    skipped = await api.post(f"/v1/self-letters/{lid}:reflect", json={"answer": "skipped"}, headers=bearer(a))
    assert skipped.status_code == 200 and skipped.json()["reflection"] == "REFLECTION_ANSWER_SKIPPED"
    later = await api.post(f"/v1/self-letters/{lid}:reflect", json={"answer": "yes"}, headers=bearer(a))
    assert_problem(later, 409, "SELF_LETTER_ALREADY_REFLECTED")


# --- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"body": "x" * 19}, ["body"]),
        ({"body": "   " + "x" * 19 + "   "}, ["body"]),  # 25 characters, 19 that are not space
        ({"body": "x" * 501}, ["body"]),
        ({"body": ""}, ["body"]),
        ({"title": "t" * 201}, ["title"]),
        ({"mood": "m" * 33}, ["mood"]),
        ({"city": "c" * 101}, ["city"]),
        ({"city": "Lis\x07bon"}, ["city"]),
        ({"title": "nul\x00"}, ["title"]),
        ({"lifeArea": None}, ["lifeArea"]),
        ({"lifeArea": "sports"}, ["lifeArea"]),
        ({"lifeArea": 9}, ["lifeArea"]),
        ({"opensAt": None}, ["opensAt"]),
        ({"opensAt": at(-60)}, ["opensAt"]),
        ({"opensAt": at(51 * 365 * 86400)}, ["opensAt"]),
        ({"body": "short", "mood": "m" * 33, "opensAt": None}, ["body", "mood", "opensAt"]),
    ],
)
async def test_invalid_fields_are_named_and_nothing_is_written(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection, fields: dict[str, Any], named: list[str]
) -> None:
    a = await new_user(api)
    response = await write(api, a, **fields)
    assert_problem(response, 400, "INVALID_FIELDS", named)
    assert await rows_of(capsules_db, a) == 0
    assert (await listed(api, a))["selfLetters"] == []


async def test_bounds_are_inclusive(api: httpx.AsyncClient) -> None:
    a = await new_user(api)
    for fields in (
        {"body": "x" * 20, "title": "t" * 200, "mood": "m" * 32, "city": "c" * 100},
        {"body": "y" * 500, "title": "", "mood": "", "city": "", "lifeArea": "LIFE_AREA_MONEY"},
    ):
        response = await write(api, a, **fields)
        assert response.status_code == 200, response.text
    assert len((await listed(api, a))["selfLetters"]) == 2


async def test_bad_ids_answers_page_tokens_and_keys(api: httpx.AsyncClient, capsules_db: asyncpg.Connection) -> None:
    a = await new_user(api)
    lid = await opened_letter(capsules_db, a)
    assert_problem(await api.get("/v1/self-letters/not-a-uuid", headers=bearer(a)), 400, "INVALID_FIELDS", ["id"])
    for answer, fields in ((None, ["answer"]), ("maybe", ["answer"]), ("REFLECTION_ANSWER_UNSPECIFIED", ["answer"])):
        body = {} if answer is None else {"answer": answer}
        refused = await api.post(f"/v1/self-letters/{lid}:reflect", json=body, headers=bearer(a))
        assert_problem(refused, 400, "INVALID_FIELDS", fields)
    assert await capsules_db.fetchval("SELECT reflection FROM self_letters WHERE id = $1::uuid", lid) is None
    bad_page = await api.get("/v1/self-letters", params={"pageToken": "nope"}, headers=bearer(a))
    assert_problem(bad_page, 400, "MALFORMED_PAGE_TOKEN", ["pageToken"])
    negative = await api.get("/v1/self-letters", params={"pageSize": -1}, headers=bearer(a))
    assert_problem(negative, 400, "INVALID_FIELDS", ["pageSize"])
    long_key = await write(api, a, key="k" * 201)
    assert_problem(long_key, 400, "INVALID_FIELDS", ["idempotencyKey"])
    assert await rows_of(capsules_db, a) == 1  # the seeded one only
    unauthenticated = await api.get("/v1/self-letters")
    assert unauthenticated.status_code == 401


# --- who sees what ----------------------------------------------------------------------------------


async def test_only_the_author_sees_a_self_letter(api: httpx.AsyncClient, capsules_db: asyncpg.Connection) -> None:
    author, stranger, blocked = await new_user(api), await new_user(api), await new_user(api)
    assert (await api.post("/v1/blocks", json={"userId": uid(author)}, headers=bearer(blocked))).status_code == 200
    sealed = (await write(api, author)).json()["id"]
    readable = await opened_letter(capsules_db, author)
    for other in (stranger, blocked):
        for lid in (sealed, readable):
            assert_problem(await api.get(f"/v1/self-letters/{lid}", headers=bearer(other)), 404, "NOT_FOUND")
            opening = await api.post(f"/v1/self-letters/{lid}:open", json={}, headers=bearer(other))
            assert_problem(opening, 404, "NOT_FOUND")
            answer = await api.post(f"/v1/self-letters/{lid}:reflect", json={"answer": "no"}, headers=bearer(other))
            assert_problem(answer, 404, "NOT_FOUND")
        assert (await listed(api, other))["selfLetters"] == []
    # An id that does not exist answers the same.
    missing = await api.post(f"/v1/self-letters/{uuid.uuid4()}:open", json={}, headers=bearer(stranger))
    assert_problem(missing, 404, "NOT_FOUND")
    # Nothing the others tried changed the author's letters.
    rows = await capsules_db.fetch("SELECT opened_at, reflection FROM self_letters WHERE id = $1::uuid", sealed)
    assert rows[0]["opened_at"] is None and rows[0]["reflection"] is None
    assert await capsules_db.fetchval("SELECT reflection FROM self_letters WHERE id = $1::uuid", readable) is None
    assert {r["id"] for r in (await listed(api, author))["selfLetters"]} == {sealed, readable}


# --- lists ------------------------------------------------------------------------------------------


async def test_pages_newest_first_with_tokens_bound_to_the_author(api: httpx.AsyncClient) -> None:
    a, b = await new_user(api), await new_user(api)
    written = []
    for i in range(5):
        response = await write(api, a, title=f"letter {i}")
        assert response.status_code == 200, response.text
        written.append(response.json()["id"])
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await listed(api, a, pageSize=2, pageToken=token)
        rows = page["selfLetters"]
        assert all(r["body"] == "" for r in rows)  # all sealed: never a body in a list item
        seen += [r["id"] for r in rows]
        pages += 1
        token = page["nextPageToken"]
        if not token:
            break
        if pages == 1:
            # The same token read by someone else is not theirs.
            stolen = await api.get("/v1/self-letters", params={"pageToken": token}, headers=bearer(b))
            assert_problem(stolen, 400, "MALFORMED_PAGE_TOKEN", ["pageToken"])
    assert seen == list(reversed(written)) and pages == 3
    capped = await listed(api, a, pageSize=1000)
    assert len(capped["selfLetters"]) == 5 and capped["nextPageToken"] == ""


# --- retries and races ------------------------------------------------------------------------------


async def test_parallel_creates_with_one_key_leave_one_letter(
    api: httpx.AsyncClient, capsules_db: asyncpg.Connection
) -> None:
    a, b = await new_user(api), await new_user(api)
    key = f"self-{uuid.uuid4()}"
    opens = at(3600)
    responses = await asyncio.gather(*(write(api, a, key=key, opensAt=opens) for _ in range(10)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await rows_of(capsules_db, a) == 1
    # A later retry answers the same letter; the key with other fields is refused; nothing new.
    retried = await write(api, a, key=key, opensAt=opens)
    assert retried.status_code == 200 and retried.json()["id"] == responses[0].json()["id"]
    reused = await write(api, a, key=key, opensAt=opens, title="another")
    assert_problem(reused, 409, "IDEMPOTENCY_KEY_REUSED", ["idempotencyKey"])
    assert await rows_of(capsules_db, a) == 1
    # Another author's same key is theirs.
    theirs = await write(api, b, key=key, opensAt=opens)
    assert theirs.status_code == 200 and theirs.json()["id"] != responses[0].json()["id"]
    assert await rows_of(capsules_db, b) == 1


async def test_answers_at_once_store_exactly_one(api: httpx.AsyncClient, capsules_db: asyncpg.Connection) -> None:
    a = await new_user(api)
    lid = await opened_letter(capsules_db, a)
    answers = ["yes", "no", "skipped"] * 4
    responses = await asyncio.gather(
        *(api.post(f"/v1/self-letters/{lid}:reflect", json={"answer": x}, headers=bearer(a)) for x in answers)
    )
    winners = [(answer, r) for answer, r in zip(answers, responses, strict=True) if r.status_code == 200]
    assert len(winners) == 1, [r.text for r in responses]
    for response in responses:
        if response.status_code != 200:
            assert_problem(response, 409, "SELF_LETTER_ALREADY_REFLECTED")
    stored = await capsules_db.fetchval("SELECT reflection FROM self_letters WHERE id = $1::uuid", lid)
    assert stored == winners[0][0]
    assert winners[0][1].json()["reflection"] == f"REFLECTION_ANSWER_{stored.upper()}"
