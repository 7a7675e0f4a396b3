"""The account field rules of SPEC §4, as pure functions."""

from __future__ import annotations

import pytest

from services.auth import rules
from services.common.errors import FieldErrors


@pytest.mark.parametrize(
    ("value", "normalised", "ok"),
    [
        ("Alice", "alice", True),
        ("a.b_c9", "a.b_c9", True),
        ("ab", "ab", False),
        ("x" * 31, "x" * 31, False),
        ("bad-name", "bad-name", False),
        ("émile", "émile", False),
        ("", "", False),
    ],
)
def test_username(value: str, normalised: str, ok: bool) -> None:
    errors = FieldErrors()
    assert rules.username(errors, value) == normalised
    assert bool(errors) is not ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [("a@b.co", True), ("no-at.example", False), ("a@b", False), ("a b@c.de", False), ("x" * 250 + "@b.co", False)],
)
def test_email(value: str, ok: bool) -> None:
    errors = FieldErrors()
    rules.email(errors, value)
    assert bool(errors) is not ok


def test_country_avatar_names_and_query() -> None:
    errors = FieldErrors()
    assert rules.country(errors, "fr") == "FR"
    assert rules.country(errors, "") == ""
    assert not errors
    rules.country(errors, "XX")
    rules.avatar_url(errors, "http://insecure.example/a.png")
    rules.avatar_url(errors, "javascript:alert(1)")
    rules.name(errors, "x" * 101, "first_name")
    rules.name(errors, "tab\there", "last_name")
    rules.search_query(errors, " a ")
    assert [field for field, _ in errors.violations] == [
        "country",
        "avatar_url",
        "avatar_url",
        "first_name",
        "last_name",
        "query",
    ]
    assert rules.avatar_url(FieldErrors(), "https://cdn.example/a.png") == "https://cdn.example/a.png"
