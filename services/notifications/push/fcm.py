"""Firebase Cloud Messaging, HTTP v1 API:

    POST {endpoint}/v1/projects/{project}/messages:send
    Authorization: Bearer <OAuth 2 access token>
    {"message": {"token": …, "notification": {"title", "body"}, "data": {…}, "android": {…}}}

Answers: 200 delivered. An error carries google.rpc details, among them an FcmError whose
errorCode says why: UNREGISTERED (404: the app was uninstalled or the token rotated),
SENDER_ID_MISMATCH (403: the token belongs to another project) and an INVALID_ARGUMENT whose field
violation names the token are dead tokens. 429 (QUOTA_EXCEEDED) and 5xx (UNAVAILABLE, INTERNAL)
are retried, after Retry-After when given. Anything else is retried too (an expired access token
is a 401 that the next attempt, with the refreshed file, gets past); the sender's attempt cap ends
the hopeless ones.

The access token comes from a file (FCM_ACCESS_TOKEN_FILE), read again when it changes: the
platform's credential helper (workload identity, or a sidecar exchanging the service account's key)
keeps it fresh, so no private key is ever held by this process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from services.notifications.push.base import Device, Message, Outcome, retry_after

DEFAULT_ENDPOINT = "https://fcm.googleapis.com"
_DEAD_CODES = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})


class TokenFile:
    """A bearer token kept in a file, read again whenever the file's mtime changes."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._mtime = -1.0
        self._token = ""

    def get(self) -> str:
        mtime = os.stat(self.path).st_mtime
        if mtime != self._mtime:
            self._token = self.path.read_text().strip()
            self._mtime = mtime
        return self._token


class FcmProvider:
    name = "fcm"

    def __init__(
        self, *, project: str, access_token: TokenFile, endpoint: str = DEFAULT_ENDPOINT, timeout_seconds: float = 10.0
    ) -> None:
        self.url = f"{endpoint.rstrip('/')}/v1/projects/{project}/messages:send"
        self.access_token = access_token
        self.client = httpx.AsyncClient(timeout=timeout_seconds)

    def body(self, device: Device, message: Message) -> dict[str, Any]:
        android: dict[str, Any] = {"priority": "HIGH"}
        if message.collapse_id:
            android["collapse_key"] = message.collapse_id
        return {
            "message": {
                "token": device.token,
                "notification": {"title": message.title, "body": message.body},
                "data": dict(message.data),
                "android": android,
            }
        }

    async def send(self, device: Device, message: Message) -> Outcome:
        try:
            answer = await self.client.post(
                self.url,
                json=self.body(device, message),
                headers={"authorization": f"Bearer {self.access_token.get()}"},
            )
        except (httpx.HTTPError, OSError) as exc:
            return Outcome.retry(reason=type(exc).__name__)
        return outcome(answer.status_code, _json(answer), answer.headers.get("retry-after"))

    async def aclose(self) -> None:
        await self.client.aclose()


def outcome(status: int, body: Any, retry_after_header: str | None) -> Outcome:
    """An FCM answer → what became of the push (the module doc)."""
    if 200 <= status < 300:
        return Outcome.delivered()
    error = body.get("error", {}) if isinstance(body, dict) else {}
    error = error if isinstance(error, dict) else {}
    code, token_violation = "", False
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        code = str(detail.get("errorCode") or code)
        for violation in detail.get("fieldViolations") or []:
            if isinstance(violation, dict) and str(violation.get("field", "")).endswith("token"):
                token_violation = True
    status_name = str(error.get("status", ""))
    if code in _DEAD_CODES or (status == 404 and status_name == "NOT_FOUND" and code in ("", "UNREGISTERED")):
        return Outcome.dead(code or status_name)
    if (code == "INVALID_ARGUMENT" or status_name == "INVALID_ARGUMENT") and token_violation:
        return Outcome.dead("INVALID_ARGUMENT")
    return Outcome.retry(retry_after(retry_after_header), code or status_name or str(status))


def _json(answer: httpx.Response) -> Any:
    try:
        return answer.json()
    except ValueError:
        return None
