"""The rules and the visibility of SPEC §6 as pure functions (no mesh): bounds at their edges,
status from the clock, what the sender, the recipient and an anonymous capsule show when."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.capsules import rules
from services.capsules.capsules import status_at, view
from services.capsules.storage import CapsuleRow
from services.common.errors import FieldErrors

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SENDER, RECIPIENT = uuid.UUID(int=1), uuid.UUID(int=2)


def row(**changes: object) -> CapsuleRow:
    values: dict[str, object] = {
        "id": uuid.UUID(int=9),
        "sender": SENDER,
        "recipient_id": uuid.UUID(int=3),
        "recipient_user": RECIPIENT,
        "title": "t",
        "body": "b",
        "theme_id": None,
        "unlocks_at": NOW + timedelta(hours=1),
        "anonymous": False,
        "reveal_delay_seconds": 21600,
        "created_at": NOW,
        "updated_at": NOW,
        "opened_at": None,
        **changes,
    }
    return CapsuleRow(**values)  # type: ignore[arg-type]


def fields(check: object) -> list[str]:
    assert isinstance(check, FieldErrors)
    return [f for f, _ in check.violations]


def test_unlock_time_bounds_with_the_default_minute() -> None:
    for offset, ok in (
        (timedelta(seconds=59), False),
        (timedelta(seconds=60), True),
        (timedelta(days=50 * 365), True),
        (timedelta(days=50 * 366), False),
        (timedelta(seconds=-1), False),
    ):
        errors = FieldErrors()
        rules.unlocks_at(errors, NOW + offset, NOW, 60)
        assert (not errors) == ok, offset
    missing = FieldErrors()
    rules.unlocks_at(missing, None, NOW, 60)
    assert fields(missing) == ["unlocks_at"]


def test_status_is_derived_from_the_clock() -> None:
    capsule = row()
    assert status_at(capsule, NOW) == "sealed"
    assert status_at(capsule, capsule.unlocks_at) == "ready"
    assert status_at(row(unlocks_at=NOW, opened_at=NOW), NOW) == "opened"


def test_who_sees_what() -> None:
    sealed = row()
    assert view(sealed, SENDER, NOW).body_visible and view(sealed, SENDER, NOW).as_sender
    assert not view(sealed, RECIPIENT, NOW).body_visible
    assert view(sealed, RECIPIENT, sealed.unlocks_at).body_visible


def test_anonymous_sender_revealed_reveal_delay_after_opening() -> None:
    opened_at = NOW + timedelta(hours=2)
    anonymous = row(anonymous=True, reveal_delay_seconds=3600, opened_at=opened_at)
    assert view(row(anonymous=True), RECIPIENT, NOW).sender_hidden
    assert view(anonymous, RECIPIENT, opened_at + timedelta(seconds=3599)).sender_hidden
    assert not view(anonymous, RECIPIENT, opened_at + timedelta(seconds=3600)).sender_hidden
    assert not view(anonymous, SENDER, NOW).sender_hidden
    at_once = row(anonymous=True, reveal_delay_seconds=0, opened_at=opened_at)
    assert not view(at_once, RECIPIENT, opened_at).sender_hidden
