"""Shared steps of the recipients tests (through the gateway)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.auth.test_auth_http import bearer, sign_up

__all__ = ["ask", "bearer", "connect", "new_user", "sign_up", "uid"]


async def new_user(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    return await sign_up(client, **fields)


def uid(session: dict[str, Any]) -> str:
    return str(session["user"]["id"])


async def ask(
    client: httpx.AsyncClient, sender: dict[str, Any], addressee: dict[str, Any] | str, message: str = ""
) -> httpx.Response:
    to = addressee if isinstance(addressee, str) else uid(addressee)
    return await client.post(
        "/v1/connection-requests", json={"toUserId": to, "message": message}, headers=bearer(sender)
    )


async def connect(client: httpx.AsyncClient, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    sent = await ask(client, a, b)
    assert sent.status_code == 200, sent.text
    accepted = await client.post(f"/v1/connection-requests/{sent.json()['id']}:accept", headers=bearer(b))
    assert accepted.status_code == 200, accepted.text
    return accepted.json()  # type: ignore[no-any-return]
