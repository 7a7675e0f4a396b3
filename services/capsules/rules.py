"""The rules of SPEC §6 that need the clock: a field's lengths, formats and ranges are declared in
capsules.proto and judged before any handler runs (services/common/field_rules.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

from services.common.errors import FieldErrors

REVEAL_DELAY_DEFAULT = 6 * 3600
# "At most 50 years ahead": 50 calendar years, leap days included.
UNLOCK_MAX_AHEAD = timedelta(days=50 * 365 + 13)


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
