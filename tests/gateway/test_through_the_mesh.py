"""The gateway in front of the real auth service (gateway → auth over its proxyless xDS client, via tests/conftest.py's
`stack`): the service's own rich errors come out as the problems the fake ones promise."""

from __future__ import annotations

import uuid
from typing import Any


def violations(body: dict[str, Any]) -> set[str]:
    return {v["field"] for v in body["fieldViolations"]}


async def test_sign_up_validation_errors_name_fields_in_camel_case(client: Any) -> None:
    response = await client.post(
        "/v1/auth:signup",
        json={"email": "not-an-email", "username": "x", "password": "short", "firstName": "A" * 101},
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["reason"] == "INVALID_FIELDS"
    assert {"email", "username", "password", "firstName"} <= violations(body)


async def test_me_without_a_token_is_401_with_a_challenge(client: Any) -> None:
    response = await client.get("/v1/me")
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["reason"] in ("UNAUTHENTICATED", "TOKEN_INVALID")


async def test_patch_me_changes_only_the_fields_sent(client: Any) -> None:
    name = f"gw{uuid.uuid4().hex[:10]}"
    signup = await client.post(
        "/v1/auth:signup",
        json={"email": f"{name}@example.com", "username": name, "password": "correct horse battery", "lastName": "L"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert signup.status_code == 200, signup.text
    auth = {"Authorization": f"Bearer {signup.json()['accessToken']}"}

    patched = await client.patch("/v1/me", json={"firstName": "Grace"}, headers=auth)
    assert patched.status_code == 200, patched.text
    assert (patched.json()["firstName"], patched.json()["lastName"]) == ("Grace", "L")

    refused = await client.patch("/v1/me", json={"email": "other@example.com"}, headers=auth)
    assert refused.status_code == 400, refused.text
    assert violations(refused.json()) == {"updateMask"}

    taken = await client.get(f"/v1/usernames/{name}")
    assert taken.status_code == 200, taken.text
    assert taken.json() == {"username": name, "available": False}
