"""Field rules of SPEC §6 as pure functions: normalise, and add field violations (proto paths)."""

from __future__ import annotations

from datetime import datetime, timedelta

from services.common.errors import FieldErrors
from services.common.validation import text

TITLE_MAX = 200
BODY_MAX = 20_000
REVEAL_DELAY_MAX = 72 * 3600
REVEAL_DELAY_DEFAULT = 6 * 3600
# "At most 50 years ahead": 50 calendar years, leap days included.
UNLOCK_MAX_AHEAD = timedelta(days=50 * 365 + 13)


def title(errors: FieldErrors, value: str, field: str = "title") -> str:
    return text(errors, value, field, TITLE_MAX)


def body(errors: FieldErrors, value: str, field: str = "body") -> str:
    """Required; kept as written (line breaks and indentation are the letter's)."""
    if not value.strip():
        errors.add(field, "is required")
    elif len(value) > BODY_MAX:
        errors.add(field, f"must be at most {BODY_MAX} characters")
    elif "\x00" in value:
        errors.add(field, "must not contain NUL characters")
    return value


def unlocks_at(
    errors: FieldErrors, value: datetime | None, now: datetime, min_lead_seconds: int, field: str = "unlocks_at"
) -> datetime | None:
    if value is None:
        errors.add(field, "is required")
        return None
    if value < now + timedelta(seconds=min_lead_seconds):
        errors.add(field, f"must be at least {min_lead_seconds} seconds in the future")
    elif value > now + UNLOCK_MAX_AHEAD:
        errors.add(field, "must be at most 50 years in the future")
    return value


def reveal_delay(errors: FieldErrors, value: int | None, field: str = "reveal_delay_seconds") -> int:
    if value is None:
        return REVEAL_DELAY_DEFAULT
    if not 0 <= value <= REVEAL_DELAY_MAX:
        errors.add(field, f"must be 0 to {REVEAL_DELAY_MAX} seconds (72 hours)")
    return value
