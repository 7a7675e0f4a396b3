"""The auth routes of SPEC §8 end to end: HTTP → gateway → Envoy → auth → Postgres/Redis.

Every success path and every error case of the foundation issue, each asserting the status of
SPEC §3 and a problem+json body that names the field.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from launcher.infra import Infra
from launcher.stack import Stack
from tests.metrics import summed
from tests.replica import replayed

PASSWORD = "correct horse battery"


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def sign_up(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    name = unique()
    body = {"email": f"{name}@example.com", "username": name, "password": PASSWORD, **fields}
    response = await client.post("/v1/auth:signup", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def bearer(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['accessToken']}"}


def assert_problem(response: httpx.Response, status: int, reason: str, fields: list[str] | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert problem["reason"] == reason, problem
    assert problem["title"] and "detail" in problem and "type" in problem
    if fields is not None:
        named = [v["field"] for v in problem.get("fieldViolations", [])]
        assert named == fields, problem


# --- sign-up ----------------------------------------------------------------------------------


async def test_sign_up_returns_a_session_and_the_profile(client: httpx.AsyncClient) -> None:
    session = await sign_up(client, firstName="Ada", lastName="Lovelace", country="gb")
    user = session["user"]
    assert set(session) == {"user", "accessToken", "refreshToken", "expiresIn"}
    assert session["expiresIn"] == 900
    assert user["firstName"] == "Ada" and user["lastName"] == "Lovelace" and user["country"] == "GB"
    assert uuid.UUID(user["id"]).version == 7
    assert user["createdAt"].endswith("Z")
    assert "password" not in str(session).lower().replace("passwordhash", "")


async def test_sign_up_missing_fields_are_all_named(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/auth:signup", json={})
    assert_problem(response, 400, "INVALID_FIELDS", ["email", "username", "password"])


async def test_sign_up_wrong_type_is_named(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/auth:signup", json={"email": 5, "username": unique(), "password": PASSWORD})
    assert response.status_code == 400
    assert [v["field"] for v in response.json()["fieldViolations"]] == ["email"]


async def test_sign_up_malformed_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/auth:signup", content=b'{"email": "a@b.co",', headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "MALFORMED_JSON")


@pytest.mark.parametrize(
    ("username", "password", "email", "field"),
    [
        ("no", PASSWORD, None, "username"),
        ("bad name!", PASSWORD, None, "username"),
        ("x" * 31, PASSWORD, None, "username"),
        (None, "short", None, "password"),
        (None, PASSWORD, "not-an-email", "email"),
    ],
)
async def test_sign_up_bad_values(
    client: httpx.AsyncClient, username: str | None, password: str, email: str | None, field: str
) -> None:
    name = unique()
    body = {"email": email or f"{name}@example.com", "username": username or name, "password": password}
    response = await client.post("/v1/auth:signup", json=body)
    assert_problem(response, 400, "INVALID_FIELDS", [field])


async def test_duplicate_email_in_another_case_and_duplicate_username(client: httpx.AsyncClient) -> None:
    first = await sign_up(client)
    email = first["user"]["email"]
    again = await client.post(
        "/v1/auth:signup", json={"email": email.upper(), "username": unique(), "password": PASSWORD}
    )
    assert_problem(again, 409, "EMAIL_TAKEN", ["email"])
    taken = await client.post(
        "/v1/auth:signup",
        json={"email": f"{unique()}@example.com", "username": first["user"]["username"].upper(), "password": PASSWORD},
    )
    assert_problem(taken, 409, "USERNAME_TAKEN", ["username"])


async def test_sign_up_with_an_idempotency_key_creates_one_account(client: httpx.AsyncClient) -> None:
    name = unique()
    body = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    responses = await asyncio.gather(*(client.post("/v1/auth:signup", json=body, headers=key) for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    assert len({r.json()["user"]["id"] for r in responses}) == 1
    assert len({r.json()["refreshToken"] for r in responses}) == 5  # each caller gets a session
    other = await client.post("/v1/auth:signup", json={**body, "username": unique()}, headers=key)
    assert_problem(other, 409, "IDEMPOTENCY_KEY_REUSED", ["idempotencyKey"])
    wrong_password = await client.post("/v1/auth:signup", json={**body, "password": "another password"}, headers=key)
    assert_problem(wrong_password, 409, "IDEMPOTENCY_KEY_REUSED")


def argon2_runs(stack: Stack) -> float:
    """argon2id computations of every auth instance so far (hashes and checks)."""
    return summed(stack, "auth", r"auth_argon2_runs_total\{[^}]*\} (\S+)")


async def test_twenty_parallel_sign_ups_with_one_key_wait_for_the_first(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    """Retries of one sign-up in a burst (a client on a bad network): the first creates the
    account; the others wait for it on the key and sign in to it — one argon2 run each, not two
    (a hash that would never be stored, then the check). With real argon2 costs the doubled work
    queued past Envoy's 5 s per try and most of them answered 503."""
    name = unique()
    body = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    before = await asyncio.to_thread(argon2_runs, stack)
    responses = await asyncio.gather(*(client.post("/v1/auth:signup", json=body, headers=key) for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
    assert len({r.json()["user"]["id"] for r in responses}) == 1
    assert await asyncio.to_thread(argon2_runs, stack) - before == 20  # 1 hash + 19 checks


# --- log-in, refresh, log-out -------------------------------------------------------------------


async def test_log_in_by_email_or_username(client: httpx.AsyncClient) -> None:
    session = await sign_up(client)
    user = session["user"]
    by_email = await client.post("/v1/auth:login", json={"email": user["email"].upper(), "password": PASSWORD})
    by_name = await client.post("/v1/auth:login", json={"username": user["username"], "password": PASSWORD})
    assert by_email.status_code == by_name.status_code == 200
    assert by_email.json()["user"]["id"] == by_name.json()["user"]["id"] == user["id"]


async def test_log_in_failures_look_the_same(client: httpx.AsyncClient) -> None:
    session = await sign_up(client)
    wrong = await client.post("/v1/auth:login", json={"email": session["user"]["email"], "password": "wrong password"})
    unknown = await client.post("/v1/auth:login", json={"email": f"{unique()}@example.com", "password": PASSWORD})
    assert_problem(wrong, 401, "INVALID_CREDENTIALS")
    assert_problem(unknown, 401, "INVALID_CREDENTIALS")
    assert wrong.json()["detail"] == unknown.json()["detail"]


async def test_log_in_needs_an_identifier_and_a_password(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/auth:login", json={})
    assert_problem(response, 400, "INVALID_FIELDS", ["email", "password"])


async def test_refresh_rotates_and_reuse_revokes_the_family(client: httpx.AsyncClient) -> None:
    session = await sign_up(client)
    first = session["refreshToken"]
    rotated = await client.post("/v1/auth:refresh", json={"refreshToken": first})
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()["refreshToken"]
    assert second != first
    assert (await client.get("/v1/me", headers=bearer(rotated.json()))).status_code == 200

    reused = await client.post("/v1/auth:refresh", json={"refreshToken": first})
    assert_problem(reused, 401, "REFRESH_TOKEN_REUSED")
    # The whole family is gone: the token the legitimate client holds no longer works either.
    after = await client.post("/v1/auth:refresh", json={"refreshToken": second})
    assert_problem(after, 401, "TOKEN_INVALID")


async def test_refresh_with_garbage_and_missing_token(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post("/v1/auth:refresh", json={"refreshToken": "nope"}), 401, "TOKEN_INVALID")
    assert_problem(await client.post("/v1/auth:refresh", json={}), 400, "INVALID_FIELDS", ["refreshToken"])


async def test_log_out_ends_the_session(client: httpx.AsyncClient) -> None:
    session = await sign_up(client)
    out = await client.post("/v1/auth:logout", json={"refreshToken": session["refreshToken"]})
    assert out.status_code == 200 and out.json() == {}
    again = await client.post("/v1/auth:logout", json={"refreshToken": session["refreshToken"]})
    assert again.status_code == 200  # idempotent
    refreshed = await client.post("/v1/auth:refresh", json={"refreshToken": session["refreshToken"]})
    assert_problem(refreshed, 401, "TOKEN_INVALID")


# --- access tokens --------------------------------------------------------------------------------


def mint(private_key_file: Path, **claims: Any) -> str:
    key = serialization.load_pem_private_key(Path(private_key_file).read_bytes(), password=None)
    now = int(time.time())
    body = {
        "iss": "capsule-mesh/auth",
        "aud": "capsule-mesh",
        "sub": str(uuid.uuid4()),
        "sid": "s",
        "iat": now,
        "exp": now + 60,
        **claims,
    }
    return jwt.encode(body, key, algorithm="EdDSA")  # type: ignore[arg-type]


async def test_me_needs_a_valid_token(client: httpx.AsyncClient, jwt_private_key_file: Path) -> None:
    session = await sign_up(client)
    me = await client.get("/v1/me", headers=bearer(session))
    assert me.status_code == 200 and me.json()["id"] == session["user"]["id"]
    assert me.json()["email"] == session["user"]["email"]

    missing = await client.get("/v1/me")
    assert_problem(missing, 401, "UNAUTHENTICATED")
    assert missing.headers.get("www-authenticate", "").lower().startswith("bearer")

    expired = mint(
        jwt_private_key_file, sub=session["user"]["id"], iat=int(time.time()) - 3600, exp=int(time.time()) - 1800
    )
    assert_problem(await client.get("/v1/me", headers={"Authorization": f"Bearer {expired}"}), 401, "TOKEN_EXPIRED")

    token = session["accessToken"]
    header, payload, signature = token.split(".")
    tampered_payload = jwt.utils.base64url_encode(  # type: ignore[attr-defined]
        jwt.utils.base64url_decode(payload).replace(b'"sub":"', b'"sub":"0')  # type: ignore[attr-defined]
    ).decode()
    for bad in (
        f"{header}.{tampered_payload}.{signature}",
        jwt.encode({"sub": session["user"]["id"], "exp": int(time.time()) + 60}, "", algorithm="none"),
        "garbage",
    ):
        assert_problem(await client.get("/v1/me", headers={"Authorization": f"Bearer {bad}"}), 401, "TOKEN_INVALID")


async def test_update_me_is_visible_on_the_next_read(client: httpx.AsyncClient) -> None:
    session = await sign_up(client, firstName="Before")
    assert (await client.get("/v1/me", headers=bearer(session))).json()["firstName"] == "Before"  # now cached
    new_name = unique("n")
    patched = await client.patch(
        "/v1/me", json={"firstName": "After", "username": new_name, "country": "jp"}, headers=bearer(session)
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["firstName"] == "After" and patched.json()["country"] == "JP"
    me = (await client.get("/v1/me", headers=bearer(session))).json()
    assert (me["firstName"], me["username"], me["lastName"]) == ("After", new_name, "")


async def test_update_me_refusals(client: httpx.AsyncClient) -> None:
    session = await sign_up(client)
    other = await sign_up(client)
    taken = await client.patch("/v1/me", json={"username": other["user"]["username"]}, headers=bearer(session))
    assert_problem(taken, 409, "USERNAME_TAKEN", ["user.username"])
    bad = await client.patch("/v1/me", json={"country": "XX", "avatarUrl": "ftp://x"}, headers=bearer(session))
    assert_problem(bad, 400, "INVALID_FIELDS", ["user.avatarUrl", "user.country"])  # in User's field order
    email = await client.patch("/v1/me", json={"email": "new@example.com"}, headers=bearer(session))
    assert_problem(email, 400, "INVALID_FIELDS", ["updateMask"])
    assert_problem(await client.patch("/v1/me", json={"firstName": "x"}), 401, "UNAUTHENTICATED")


# --- usernames ------------------------------------------------------------------------------------


async def test_check_username(client: httpx.AsyncClient) -> None:
    session = await sign_up(client)
    taken = await client.get(f"/v1/usernames/{session['user']['username'].upper()}")
    assert taken.status_code == 200 and taken.json() == {"username": session["user"]["username"], "available": False}
    free = await client.get(f"/v1/usernames/{unique()}")
    assert free.status_code == 200 and free.json()["available"] is True
    assert_problem(await client.get("/v1/usernames/no"), 400, "INVALID_FIELDS", ["username"])
    assert_problem(await client.get("/v1/usernames/bad%20name"), 400, "INVALID_FIELDS", ["username"])


# --- search -------------------------------------------------------------------------------------


async def test_search_finds_by_prefix_name_and_email_never_the_caller_nor_emails(client: httpx.AsyncClient) -> None:
    tag = uuid.uuid4().hex[:6]
    me = await sign_up(client, firstName=f"Zed{tag}")
    target = await sign_up(client, firstName=f"Zed{tag}", lastName="Target")
    headers = bearer(me)

    by_name = await client.get("/v1/users:search", params={"query": f"zed{tag}"}, headers=headers)
    assert by_name.status_code == 200, by_name.text
    ids = [u["id"] for u in by_name.json()["users"]]
    assert ids == [target["user"]["id"]]
    assert all(set(u) <= {"id", "username", "firstName", "lastName", "avatarUrl"} for u in by_name.json()["users"])

    by_email = await client.get("/v1/users:search", params={"query": target["user"]["email"]}, headers=headers)
    assert [u["id"] for u in by_email.json()["users"]] == [target["user"]["id"]]
    by_username = await client.get(
        "/v1/users:search", params={"query": target["user"]["username"][:8]}, headers=headers
    )
    assert target["user"]["id"] in [u["id"] for u in by_username.json()["users"]]


async def test_search_pages_without_duplicates(client: httpx.AsyncClient, infra: Infra) -> None:
    tag = "pg" + uuid.uuid4().hex[:6]
    me = await sign_up(client)
    created = {(await sign_up(client, lastName=f"{tag}{i}"))["user"]["id"] for i in range(7)}
    # Search reads a replica and names no one whose writes it must have seen: new sign-ups may
    # show up to the lag bound later (README "Read replicas"). Paging is what is tested here.
    await replayed(infra)
    seen: list[str] = []
    token = ""
    for _ in range(10):
        params = {"query": tag, "pageSize": "3", **({"pageToken": token} if token else {})}
        page = (await client.get("/v1/users:search", params=params, headers=bearer(me))).json()
        assert len(page["users"]) <= 3
        seen += [u["id"] for u in page["users"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert sorted(seen) == sorted(created) and len(seen) == len(set(seen))


async def test_search_escapes_like_wildcards_and_validates(client: httpx.AsyncClient) -> None:
    me = await sign_up(client)
    everyone = await client.get("/v1/users:search", params={"query": "%%"}, headers=bearer(me))
    assert everyone.status_code == 200 and everyone.json()["users"] == []
    underscore = await client.get("/v1/users:search", params={"query": "u_"}, headers=bearer(me))
    assert all("_" in u["username"][:2] for u in underscore.json()["users"])
    assert_problem(
        await client.get("/v1/users:search", params={"query": "a"}, headers=bearer(me)),
        400,
        "INVALID_FIELDS",
        ["query"],
    )
    bad_token = await client.get("/v1/users:search", params={"query": "ab", "pageToken": "x"}, headers=bearer(me))
    assert_problem(bad_token, 400, "MALFORMED_PAGE_TOKEN", ["pageToken"])
    bad_size = await client.get("/v1/users:search", params={"query": "ab", "pageSize": "ten"}, headers=bearer(me))
    assert_problem(bad_size, 400, "INVALID_FIELDS", ["pageSize"])
    assert_problem(await client.get("/v1/users:search", params={"query": "ab"}), 401, "UNAUTHENTICATED")
