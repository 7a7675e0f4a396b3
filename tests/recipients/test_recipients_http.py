"""The address book through the gateway: CRUD, uniqueness by email and by linked user, linking to
connections only, the name-prefix filter, and keyset paging over 5,000 recipients of one owner
while rows are inserted between pages (no duplicates, no gaps, never the whole book at once)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from launcher.infra import Infra
from launcher.stack import Stack
from tests.auth.test_auth_http import assert_problem
from tests.recipients.helpers import bearer, connect, new_user, uid
from tests.replica import replayed


async def create(client: httpx.AsyncClient, who: dict[str, Any], **body: Any) -> httpx.Response:
    return await client.post("/v1/recipients", json=body, headers=bearer(who))


async def test_create_get_update_delete(client: httpx.AsyncClient) -> None:
    owner = await new_user(client)
    created = await create(client, owner, name="  Grandma   Rose ", email="Rose@Example.com")
    assert created.status_code == 200, created.text
    rose = created.json()
    assert rose["name"] == "Grandma Rose" and rose["email"] == "Rose@Example.com" and rose["linkedUserId"] == ""
    assert uuid.UUID(rose["id"]).version == 7
    got = await client.get(f"/v1/recipients/{rose['id']}", headers=bearer(owner))
    assert got.json() == rose

    patched = await client.patch(f"/v1/recipients/{rose['id']}", json={"name": "Nana"}, headers=bearer(owner))
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Nana" and patched.json()["email"] == "Rose@Example.com"
    cleared = await client.patch(
        f"/v1/recipients/{rose['id']}", params={"updateMask": "email"}, json={}, headers=bearer(owner)
    )
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["email"] == ""

    deleted = await client.delete(f"/v1/recipients/{rose['id']}", headers=bearer(owner))
    assert deleted.status_code == 200
    assert_problem(await client.get(f"/v1/recipients/{rose['id']}", headers=bearer(owner)), 404, "NOT_FOUND")
    assert_problem(await client.delete(f"/v1/recipients/{rose['id']}", headers=bearer(owner)), 404, "NOT_FOUND")


async def test_validation_and_uniqueness(client: httpx.AsyncClient) -> None:
    owner = await new_user(client)
    assert_problem(await create(client, owner), 400, "INVALID_FIELDS", ["name"])
    assert_problem(await create(client, owner, name="x" * 101), 400, "INVALID_FIELDS", ["name"])
    assert_problem(
        await create(client, owner, name="", email="nope", linkedUserId="zz"),
        400,
        "INVALID_FIELDS",
        ["name", "email", "linkedUserId"],
    )
    assert (await create(client, owner, name="A", email="same@example.com")).status_code == 200
    taken = await create(client, owner, name="B", email="SAME@example.com")
    assert_problem(taken, 409, "RECIPIENT_EMAIL_TAKEN", ["email"])
    # Another owner's address book is separate.
    other = await new_user(client)
    assert (await create(client, other, name="A", email="same@example.com")).status_code == 200
    # Recipients without an email do not collide.
    assert (await create(client, owner, name="C")).status_code == 200
    assert (await create(client, owner, name="C")).status_code == 200
    b = (await create(client, owner, name="B", email="b@example.com")).json()
    clash = await client.patch(f"/v1/recipients/{b['id']}", json={"email": "same@example.com"}, headers=bearer(owner))
    assert_problem(clash, 409, "RECIPIENT_EMAIL_TAKEN", ["recipient.email"])
    bad_mask = await client.patch(
        f"/v1/recipients/{b['id']}", params={"updateMask": "owner"}, json={}, headers=bearer(owner)
    )
    assert_problem(bad_mask, 400, "INVALID_FIELDS", ["updateMask"])
    assert_problem(await client.get("/v1/recipients/nope", headers=bearer(owner)), 400, "INVALID_FIELDS", ["id"])


async def test_linked_user_must_be_a_connection_and_is_unique(client: httpx.AsyncClient) -> None:
    a, b, stranger = await new_user(client), await new_user(client), await new_user(client)
    not_connected = await create(client, a, name="S", linkedUserId=uid(stranger))
    assert_problem(not_connected, 400, "NOT_CONNECTED", ["linkedUserId"])
    await connect(client, a, b)
    # Accepting made the linked recipient already: a second one is refused, by field.
    dup = await create(client, a, name="B again", linkedUserId=uid(b))
    assert_problem(dup, 409, "RECIPIENT_LINKED_USER_TAKEN", ["linkedUserId"])
    plain = (await create(client, a, name="Plain")).json()
    relink = await client.patch(
        f"/v1/recipients/{plain['id']}", json={"linkedUserId": uid(stranger)}, headers=bearer(a)
    )
    assert_problem(relink, 400, "NOT_CONNECTED", ["recipient.linkedUserId"])


async def test_name_prefix_filter(client: httpx.AsyncClient) -> None:
    owner = await new_user(client)
    for name in ("Alice", "alfred", "Bob", "Al%ce", "Zed"):
        assert (await create(client, owner, name=name)).status_code == 200
    response = await client.get("/v1/recipients", params={"query": "al"}, headers=bearer(owner))
    assert [r["name"] for r in response.json()["recipients"]] == ["Al%ce", "alfred", "Alice"]
    wildcard = await client.get("/v1/recipients", params={"query": "al%"}, headers=bearer(owner))
    assert [r["name"] for r in wildcard.json()["recipients"]] == ["Al%ce"]
    # A token of one filter is refused for another.
    page = await client.get("/v1/recipients", params={"query": "al", "pageSize": 1}, headers=bearer(owner))
    other = await client.get(
        "/v1/recipients", params={"query": "b", "pageToken": page.json()["nextPageToken"]}, headers=bearer(owner)
    )
    assert_problem(other, 400, "MALFORMED_PAGE_TOKEN")


@pytest.fixture
async def recipients_db(stack: Stack) -> Any:
    dsn = stack.database_urls["recipients"].replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


async def test_paging_five_thousand_recipients_while_rows_are_inserted(
    client: httpx.AsyncClient, recipients_db: asyncpg.Connection, infra: Infra
) -> None:
    owner = await new_user(client)
    owner_id = uuid.UUID(uid(owner))
    await recipients_db.execute(
        """
        INSERT INTO recipients (id, owner, name, email)
        SELECT gen_random_uuid(), $1, 'person ' || lpad(i::text, 5, '0'), 'p' || i || '@example.com'
          FROM generate_series(1, 5000) AS i
        """,
        owner_id,
    )
    original = {r["id"] for r in await recipients_db.fetch("SELECT id FROM recipients WHERE owner = $1", owner_id)}
    assert len(original) == 5000
    await replayed(infra)  # the list may be read from the standby

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = await client.get(
            "/v1/recipients", params={"pageSize": 100, "pageToken": token}, headers=bearer(owner)
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["recipients"]) <= 100
        seen += [r["id"] for r in body["recipients"]]
        token = body["nextPageToken"]
        pages += 1
        if not token:
            break
        # Rows sorting before the cursor ("a…") and after it ("zz…"), inserted between pages.
        await recipients_db.execute(
            "INSERT INTO recipients (id, owner, name) VALUES ($1, $3, $4), ($2, $3, $5)",
            uuid.uuid4(),
            uuid.uuid4(),
            owner_id,
            f"a inserted {pages}",
            f"zz inserted {pages}",
        )
        await replayed(infra)
    assert len(seen) == len(set(seen)), "a row came twice"
    assert original <= {uuid.UUID(s) for s in seen}, "a row was skipped"
    assert pages >= 50 and len(seen) >= 5000
    # Rows inserted after the cursor had passed are seen; those before it are not (keyset, stable).
    late = await recipients_db.fetch(
        "SELECT id, name FROM recipients WHERE owner = $1 AND name LIKE 'zz inserted %'", owner_id
    )
    assert {str(r["id"]) for r in late} <= set(seen)
