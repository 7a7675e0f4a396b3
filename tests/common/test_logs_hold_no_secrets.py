"""SPEC §3: logs never carry secrets or personal data. Every flow of the product runs through the
session mesh with values that cannot occur by chance — passwords (right and wrong), the tokens
handed out, email addresses, a search by email, a letter's body — including refusals and hostile
input (a NUL that must never reach SQL), then every log file of the stack (gateway, Envoy, control
plane, every service instance, migrations) is searched for each of them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc

from launcher.stack import Stack
from tests.capsules.helpers import at, bearer, eventually, recipient_of
from tests.recipients.helpers import connect


def marker(kind: str) -> str:
    return f"{kind}{uuid.uuid4().hex}"


async def sign_up(client: httpx.AsyncClient, secrets: list[str]) -> dict[str, Any]:
    name = marker("lg")[:24]
    email, password = f"{name}@example.com", marker("Pw-")
    response = await client.post("/v1/auth:signup", json={"email": email, "username": name, "password": password})
    assert response.status_code == 200, response.text
    session: dict[str, Any] = response.json()
    logged_in = await client.post("/v1/auth:login", json={"email": email, "password": password})
    assert logged_in.status_code == 200, logged_in.text
    wrong = marker("WrongPw-")
    refused = await client.post("/v1/auth:login", json={"email": email, "password": wrong})
    assert refused.status_code == 401, refused.text
    session["email"], session["password"] = email, password
    secrets += [email, password, wrong, session["accessToken"], session["refreshToken"]]
    secrets += [logged_in.json()["accessToken"], logged_in.json()["refreshToken"]]
    return session


async def _true(value: object) -> bool | None:
    return True if value else None


def files_holding(log_dir: Path, secrets: list[str]) -> dict[str, list[str]]:
    """Log file → the secrets found in it."""
    found: dict[str, list[str]] = {}
    for path in sorted(log_dir.rglob("*")):
        if path.is_file():
            text = path.read_text(errors="replace")
            hits = [s for s in secrets if s in text]
            if hits:
                found[path.name] = hits
    return found


async def test_no_password_token_email_or_letter_body_reaches_any_log(client: httpx.AsyncClient, stack: Stack) -> None:
    secrets: list[str] = []
    a, b = await sign_up(client, secrets), await sign_up(client, secrets)
    found = await client.get("/v1/users:search", params={"query": b["email"]}, headers=bearer(a))
    assert found.status_code == 200, found.text
    await connect(client, a, b)
    to_b = await recipient_of(client, a, b)

    body, title = marker("LetterBody-"), marker("Title-")
    secrets.append(body)
    sent = await client.post(
        "/v1/capsules",
        json={"recipientId": to_b, "title": title, "body": body, "unlocksAt": at(3600)},
        headers=bearer(a),
    )
    assert sent.status_code == 200, sent.text
    edited = await client.patch(f"/v1/capsules/{sent.json()['id']}", json={"body": body + "-edited"}, headers=bearer(a))
    assert edited.status_code == 200, edited.text
    renamed = await client.patch("/v1/me", json={"lastName": marker("Ln")[:30]}, headers=bearer(a))
    assert renamed.status_code == 200, renamed.text

    # Refusals and hostile input: the error paths log too.
    nul_name = marker("Name-") + "\x00"
    secrets.append(nul_name.rstrip("\x00"))
    refused = await client.post("/v1/recipients", json={"name": nul_name}, headers=bearer(a))
    assert refused.status_code == 400, refused.text
    forged = await client.get("/v1/capsules", params={"pageToken": marker("tok")}, headers=bearer(a))
    assert forged.status_code == 400, forged.text
    expired = await client.get("/v1/me", headers={"Authorization": "Bearer " + a["refreshToken"]})
    assert expired.status_code == 401, expired.text

    refreshed = await client.post("/v1/auth:refresh", json={"refreshToken": a["refreshToken"]})
    assert refreshed.status_code == 200, refreshed.text
    secrets += [refreshed.json()["accessToken"], refreshed.json()["refreshToken"]]
    out = await client.post("/v1/auth:logout", json={"refreshToken": refreshed.json()["refreshToken"]})
    assert out.status_code == 200, out.text

    # The scan reads what the processes wrote: Envoy's access log names each call's request id; it
    # writes in order but flushes on its own schedule, so the last call's line showing up means the
    # earlier ones are written (the Python processes write line by line: PYTHONUNBUFFERED).
    request_id = marker("rid-")
    async with stack.envoy_channel() as channel:
        check = auth_pb2_grpc.AuthServiceStub(channel).CheckUsername
        await check(
            auth_pb2.CheckUsernameRequest(username="free" + request_id[4:12]), metadata=[("x-request-id", request_id)]
        )
    await eventually(lambda: _true(files_holding(stack.log_dir, [request_id])), within=10)
    assert files_holding(stack.log_dir, secrets) == {}
