"""The rules of SPEC §4 for account fields: normalisation and validation, as pure functions.

Each validator adds field violations (proto field paths) to a FieldErrors and returns the
normalised value, so one request reports all its problems at once.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from services.common.countries import ISO_3166_ALPHA2
from services.common.errors import FieldErrors

USERNAME_RE = re.compile(r"[a-z0-9_.]{3,30}")
# Deliberately loose (the only real check is a confirmation mail): one @, a dot in the domain,
# no spaces or control characters.
EMAIL_RE = re.compile(r"[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f.]+")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

PASSWORD_MIN, PASSWORD_MAX = 8, 256
NAME_MAX = 100
EMAIL_MAX = 254
AVATAR_URL_MAX = 2048
SEARCH_QUERY_MIN, SEARCH_QUERY_MAX = 2, 100


def email(errors: FieldErrors, value: str, field: str = "email") -> str:
    value = value.strip()
    if not value:
        errors.add(field, "is required")
    elif len(value) > EMAIL_MAX or not EMAIL_RE.fullmatch(value):
        errors.add(field, "must be an email address such as name@example.com")
    return value


def username(errors: FieldErrors, value: str, field: str = "username") -> str:
    value = value.strip().lower()
    if not value:
        errors.add(field, "is required")
    elif not USERNAME_RE.fullmatch(value):
        errors.add(field, "must be 3 to 30 characters among a-z, 0-9, '_' and '.'")
    return value


def password(errors: FieldErrors, value: str, field: str = "password") -> str:
    if not value:
        errors.add(field, "is required")
    elif not PASSWORD_MIN <= len(value) <= PASSWORD_MAX:
        errors.add(field, f"must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    return value


def name(errors: FieldErrors, value: str, field: str) -> str:
    value = value.strip()
    if len(value) > NAME_MAX:
        errors.add(field, f"must be at most {NAME_MAX} characters")
    elif CONTROL_RE.search(value):
        errors.add(field, "must not contain control characters")
    return value


def country(errors: FieldErrors, value: str, field: str = "country") -> str:
    value = value.strip().upper()
    if value and value not in ISO_3166_ALPHA2:
        errors.add(field, "must be an ISO 3166-1 alpha-2 country code such as FR or US")
    return value


def avatar_url(errors: FieldErrors, value: str, field: str = "avatar_url") -> str:
    value = value.strip()
    if not value:
        return value
    parts = urlsplit(value)
    if len(value) > AVATAR_URL_MAX or parts.scheme != "https" or not parts.netloc or CONTROL_RE.search(value):
        errors.add(field, f"must be an https URL of at most {AVATAR_URL_MAX} characters")
    return value


def search_query(errors: FieldErrors, value: str, field: str = "query") -> str:
    value = " ".join(value.split())
    if len(value) < SEARCH_QUERY_MIN:
        errors.add(field, f"must be at least {SEARCH_QUERY_MIN} characters")
    elif len(value) > SEARCH_QUERY_MAX:
        errors.add(field, f"must be at most {SEARCH_QUERY_MAX} characters")
    return value
