"""What every push provider offers: send one message to one device, and say what became of it.

The sender job (sender.py) decides what to do with the outcome: mark the delivery done,
reschedule it (exponential back-off, or the provider's own delay when it gave one), or drop the
device whose token the provider no longer knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class Result(Enum):
    DELIVERED = "delivered"
    # Not now (throttled, provider down, network): try again later.
    RETRY = "retry"
    # The provider will never deliver to this token (app uninstalled, token rotated or malformed).
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Result
    # For RETRY: the provider's own delay (Retry-After), when it gave one; None leaves the delay to
    # the sender's back-off.
    retry_after_seconds: float | None = None
    # A short reason for logs and tests (the provider's error code), never the token or the message.
    reason: str = ""

    @classmethod
    def delivered(cls) -> Outcome:
        return cls(Result.DELIVERED)

    @classmethod
    def retry(cls, after: float | None = None, reason: str = "") -> Outcome:
        return cls(Result.RETRY, after, reason)

    @classmethod
    def dead(cls, reason: str = "") -> Outcome:
        return cls(Result.DEAD, reason=reason)


@dataclass(frozen=True, slots=True)
class Device:
    token: str
    platform: str  # "fcm" or "apns"


@dataclass(frozen=True, slots=True)
class Message:
    """What a push says. No personal data: the kind and the ids the app needs to fetch the rest
    over the API (a letter's body or a sender's name never goes through a push provider)."""

    title: str
    body: str
    data: dict[str, str] = field(default_factory=dict)
    # Collapse key / apns-collapse-id: a second push of the same notification replaces the first.
    collapse_id: str = ""


class PushProvider(Protocol):
    # The metrics label: "fcm", "apns" or "log".
    name: str

    async def send(self, device: Device, message: Message) -> Outcome: ...

    async def aclose(self) -> None: ...


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (the HTTP-date form is not used by FCM or APNs: ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
