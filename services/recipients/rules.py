"""Field rules of SPEC §5 as pure functions: normalise, and add field violations (proto paths)."""

from __future__ import annotations

import re

from services.common.errors import FieldErrors

MESSAGE_MAX = 500
REASON_MAX = 500
NAME_MAX = 100
EMAIL_MAX = 254
EMAIL_RE = re.compile(r"[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f.]+")


def recipient_name(errors: FieldErrors, value: str, field: str = "name") -> str:
    value = " ".join(value.split())
    if not value:
        errors.add(field, "is required")
    elif len(value) > NAME_MAX:
        errors.add(field, f"must be 1 to {NAME_MAX} characters")
    return value


def optional_email(errors: FieldErrors, value: str, field: str = "email") -> str | None:
    value = value.strip()
    if not value:
        return None
    if len(value) > EMAIL_MAX or not EMAIL_RE.fullmatch(value):
        errors.add(field, "must be an email address such as name@example.com")
    return value
