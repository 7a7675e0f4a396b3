"""Field rules every service shares. Each adds its violations (proto field paths) to a FieldErrors
and returns the normalised value, so a request reports all of its problems at once."""

from __future__ import annotations

import re
import uuid

from services.common.errors import FieldErrors, InvalidArgument
from services.common.ids import parse_uuid

# Control characters other than the layout ones (tab, line feed, carriage return).
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def uuid_field(errors: FieldErrors, value: str, field: str, *, required: bool = True) -> uuid.UUID | None:
    value = value.strip()
    if not value:
        if required:
            errors.add(field, "is required")
        return None
    parsed = parse_uuid(value)
    if parsed is None:
        errors.add(field, "must be a UUID")
    return parsed


def resource_id(value: str, field: str = "id") -> uuid.UUID:
    """The UUID a request names its resource by (Get, Update, Delete, …): alone in the request,
    so a bad one is refused at once rather than collected."""
    parsed = parse_uuid(value.strip())
    if parsed is None:
        raise InvalidArgument(f"{field} must be a UUID", violations=[(field, "must be a UUID")])
    return parsed


def text(errors: FieldErrors, value: str, field: str, maximum: int) -> str:
    """Free text up to `maximum` characters, trimmed, without control characters."""
    value = value.strip()
    if len(value) > maximum:
        errors.add(field, f"must be at most {maximum} characters")
    elif CONTROL_RE.search(value):
        errors.add(field, "must not contain control characters")
    return value
