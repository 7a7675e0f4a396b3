"""Identifiers: time-ordered UUIDv7 for every new row (SPEC §3)."""

from __future__ import annotations

import uuid

from uuid_utils.compat import uuid7


def new_id() -> uuid.UUID:
    return uuid7()


def parse_uuid(value: str) -> uuid.UUID | None:
    """The UUID in `value`, or None when it is not one (callers turn None into a field violation)."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None
