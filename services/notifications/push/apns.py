"""Apple Push Notification service, HTTP/2 provider API:

    POST {endpoint}/3/device/{token}      (HTTP/2 only: APNs refuses HTTP/1.1)
    authorization: bearer <provider token: a JWT, ES256, {iss: team id, iat}, header kid: key id>
    apns-topic: <the app's bundle id>, apns-push-type: alert, apns-priority: 10
    {"aps": {"alert": {"title", "body"}}, …data}

Answers: 200 delivered. 410 (Unregistered) and 400 BadDeviceToken / DeviceTokenNotForTopic are
dead tokens. 429 (TooManyRequests) and 5xx are retried, after Retry-After when given. A 403
ExpiredProviderToken makes a new provider token at once, then the push is retried; anything else is
retried too, until the sender's attempt cap.

The provider token is signed with the .p8 key (APNS_KEY_FILE, an EC P-256 private key in PEM) and
reused for 40 minutes: Apple refuses tokens older than an hour and too frequent new ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import jwt

from services.notifications.push.base import Device, Message, Outcome, retry_after

DEFAULT_ENDPOINT = "https://api.push.apple.com"
TOKEN_LIFETIME_SECONDS = 40 * 60
_DEAD_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"})


class ProviderToken:
    """The ES256 JWT APNs takes as `authorization: bearer …`, made again every TOKEN_LIFETIME_SECONDS."""

    def __init__(self, *, key_pem: bytes, key_id: str, team_id: str, clock: Any = time.time) -> None:
        self.key_pem = key_pem
        self.key_id = key_id
        self.team_id = team_id
        self.clock = clock
        self._token = ""
        self._made_at = 0.0

    @classmethod
    def from_file(cls, path: str, *, key_id: str, team_id: str) -> ProviderToken:
        return cls(key_pem=Path(path).read_bytes(), key_id=key_id, team_id=team_id)

    def get(self) -> str:
        now = self.clock()
        if not self._token or now - self._made_at >= TOKEN_LIFETIME_SECONDS:
            self._token = jwt.encode(
                {"iss": self.team_id, "iat": int(now)}, self.key_pem, algorithm="ES256", headers={"kid": self.key_id}
            )
            self._made_at = now
        return self._token

    def expire(self) -> None:
        self._token = ""


class ApnsProvider:
    name = "apns"

    def __init__(
        self, *, topic: str, token: ProviderToken, endpoint: str = DEFAULT_ENDPOINT, timeout_seconds: float = 10.0
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.topic = topic
        self.token = token
        # http1=False: HTTP/2 always, negotiated by ALPN over TLS and with prior knowledge over
        # plain TCP (a local fake); one connection multiplexes every push.
        self.client = httpx.AsyncClient(http1=False, http2=True, timeout=timeout_seconds)

    def request(self, device: Device, message: Message) -> tuple[str, dict[str, str], dict[str, Any]]:
        headers = {
            "authorization": f"bearer {self.token.get()}",
            "apns-topic": self.topic,
            "apns-push-type": "alert",
            "apns-priority": "10",
        }
        if message.collapse_id:
            headers["apns-collapse-id"] = message.collapse_id[:64]
        payload: dict[str, Any] = {"aps": {"alert": {"title": message.title, "body": message.body}}}
        payload.update({k: v for k, v in message.data.items() if k != "aps"})
        return f"{self.endpoint}/3/device/{device.token}", headers, payload

    async def send(self, device: Device, message: Message) -> Outcome:
        url, headers, payload = self.request(device, message)
        try:
            answer = await self.client.post(url, json=payload, headers=headers)
        except (httpx.HTTPError, OSError) as exc:
            return Outcome.retry(reason=type(exc).__name__)
        result = outcome(answer.status_code, _reason(answer), answer.headers.get("retry-after"))
        if result.reason == "ExpiredProviderToken":
            self.token.expire()
        return result

    async def aclose(self) -> None:
        await self.client.aclose()


def outcome(status: int, reason: str, retry_after_header: str | None) -> Outcome:
    """An APNs answer → what became of the push (the module doc)."""
    if status == 200:
        return Outcome.delivered()
    if status == 410 or (status == 400 and reason in _DEAD_REASONS):
        return Outcome.dead(reason or str(status))
    return Outcome.retry(retry_after(retry_after_header), reason or str(status))


def _reason(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return ""
    return str(body.get("reason", "")) if isinstance(body, dict) else ""
