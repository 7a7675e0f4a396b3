"""The field rules the protos declare, judged by the request walk on the real request messages
(services/common/field_rules.py, services/common/validation.py): what is normalized, what is
refused and how the refusal reads."""

from __future__ import annotations

from typing import Any

import pytest
from capsule.auth.v1 import auth_pb2
from capsule.capsules.v1 import capsules_pb2, replies_pb2, self_letters_pb2
from capsule.notifications.v1 import notifications_pb2
from capsule.recipients.v1 import recipients_pb2

from services.common.validation import request_checker

UUID = "0192f5e0-7c1a-7b3e-9d4f-1a2b3c4d5e6f"


def judge(message: Any) -> list[tuple[str, str]]:
    check = request_checker(message.DESCRIPTOR)
    assert check is not None
    return check(message)


def sign_up(**fields: str) -> auth_pb2.SignUpRequest:
    return auth_pb2.SignUpRequest(**{"email": "a@b.co", "username": "ada_l", "password": "p" * 8, **fields})


@pytest.mark.parametrize(
    ("value", "normalized", "ok"),
    [
        ("Alice", "alice", True),
        ("  a.b_c9 ", "a.b_c9", True),
        ("ab", "ab", False),
        ("x" * 30, "x" * 30, True),
        ("x" * 31, "x" * 31, False),
        ("bad-name", "bad-name", False),
        ("émile", "émile", False),
        ("", "", False),
    ],
)
def test_usernames_are_trimmed_lower_cased_and_shaped(value: str, normalized: str, ok: bool) -> None:
    request = sign_up(username=value)
    violations = judge(request)
    assert [f for f, _ in violations] == ([] if ok else ["username"])
    if ok:
        assert request.username == normalized


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a@b.co", True),
        (" a@b.co ", True),
        ("no-at.example", False),
        ("a@b", False),
        ("a b@c.de", False),
        ("x" * 242 + "@example.com", True),
        ("x" * 243 + "@example.com", False),
    ],
)
def test_emails(value: str, ok: bool) -> None:
    assert [f for f, _ in judge(sign_up(email=value))] == ([] if ok else ["email"])


def test_every_problem_of_a_sign_up_is_named_at_once() -> None:
    request = auth_pb2.SignUpRequest(
        username="ab",
        password="short",
        first_name="x" * 101,
        last_name="tab\there",
        avatar_url="http://insecure.example/a.png",
        country="XX",
    )
    assert judge(request) == [  # in the message's field order, the unset email included
        ("email", "is required"),
        ("username", "must be 3 to 30 characters among a-z, 0-9, '_' and '.'"),
        ("password", "must be 8 to 256 characters"),
        ("first_name", "must be at most 100 characters"),
        ("last_name", "must not contain control characters"),
        ("avatar_url", "must be an https URL of at most 2048 characters"),
        ("country", "must be an ISO 3166-1 alpha-2 country code such as FR or US"),
    ]


def test_a_password_is_kept_exactly_as_typed() -> None:
    request = sign_up(password="  spaced out  ")
    assert judge(request) == []
    assert request.password == "  spaced out  "
    delete = auth_pb2.DeleteMeRequest(password=" secret ")
    assert judge(delete) == []
    assert delete.password == " secret "
    assert judge(auth_pb2.DeleteMeRequest()) == [("password", "is required")]


def test_countries_are_upper_cased_and_must_be_assigned() -> None:
    request = sign_up(country=" fr ")
    assert judge(request) == [] and request.country == "FR"
    assert [f for f, _ in judge(sign_up(country="XX"))] == ["country"]
    assert judge(sign_up(country="")) == []


def test_log_in_needs_an_email_or_a_username_and_a_password() -> None:
    assert judge(auth_pb2.LogInRequest()) == [
        ("email", "is required: give one of email, username"),
        ("password", "is required"),
    ]
    assert [f for f, _ in judge(auth_pb2.LogInRequest(email="  ", password="x"))] == ["email"]
    assert judge(auth_pb2.LogInRequest(username="Ada_L", password="x")) == []


def test_search_queries_collapse_their_spaces() -> None:
    request = auth_pb2.SearchUsersRequest(query="  ada   lovelace ")
    assert judge(request) == [] and request.query == "ada lovelace"
    assert judge(auth_pb2.SearchUsersRequest(query=" a ")) == [("query", "must be 2 to 100 characters")]
    assert judge(auth_pb2.SearchUsersRequest(query="ada", page_size=-1)) == [("page_size", "must be 0 or more")]


def test_a_capsule_body_is_kept_as_written_and_must_not_be_blank() -> None:
    body = "  Dear Ada,\n\n\tindented\n"
    request = capsules_pb2.CreateCapsuleRequest(recipient_id=UUID, body=body)
    assert judge(request) == [("unlocks_at", "is required")]
    assert request.body == body
    blank = capsules_pb2.CreateCapsuleRequest(recipient_id=UUID, body=" \n ")
    assert ("body", "is required") in judge(blank)


def test_ranges_and_formats_of_a_capsule() -> None:
    request = capsules_pb2.CreateCapsuleRequest(
        recipient_id="nope",
        body="b",
        title="line\nbreak",
        theme_id=UUID.upper(),
        reveal_delay_seconds=72 * 3600 + 1,
        disappear_after_open_seconds=0,
    )
    request.unlocks_at.GetCurrentTime()
    assert judge(request) == [
        ("recipient_id", "must be a UUID"),
        ("title", "must not contain control characters"),
        ("reveal_delay_seconds", "must be 0 to 259200 seconds (72 hours)"),
        ("disappear_after_open_seconds", "must be at most 86400 seconds (24 hours)"),
    ]


def test_an_update_judges_the_resource_fields_it_carries() -> None:
    request = capsules_pb2.UpdateCapsuleRequest(id=UUID, capsule=capsules_pb2.Capsule(title="x" * 201))
    assert judge(request) == [("capsule.title", "must be at most 200 characters")]
    assert judge(capsules_pb2.UpdateCapsuleRequest(id="x")) == [("id", "must be a UUID"), ("capsule", "is required")]


@pytest.mark.parametrize(
    ("sent", "kept"), [("\u2764", "\u2764\ufe0f"), ("\u2764\ufe0f", "\u2764\ufe0f"), (" 😊 ", "😊")]
)
def test_a_reply_emoji_is_one_of_seven_in_its_canonical_spelling(sent: str, kept: str) -> None:
    request = replies_pb2.CreateReplyRequest(capsule_id=UUID, emoji=sent)
    assert judge(request) == []
    assert request.emoji == kept


def test_a_reply_refuses_other_emoji_and_long_text() -> None:
    request = replies_pb2.CreateReplyRequest(capsule_id=UUID, emoji="👍", text="é" * 61)
    assert [f for f, _ in judge(request)] == ["text", "emoji"]
    # NFC first: 60 letters written as letter + combining accent are 60 characters.
    request = replies_pb2.CreateReplyRequest(capsule_id=UUID, emoji="😊", text="e\u0301" * 60)
    assert judge(request) == [] and request.text == "é" * 60


def test_self_letter_bodies_have_a_minimum_without_their_surrounding_spaces() -> None:
    short = self_letters_pb2.CreateSelfLetterRequest(
        body=" " * 10 + "x" * 19, life_area=self_letters_pb2.LIFE_AREA_WORK
    )
    short.opens_at.GetCurrentTime()
    assert judge(short) == [("body", "must be 20 to 500 characters")]
    assert judge(self_letters_pb2.CreateSelfLetterRequest(body="x" * 20)) == [
        ("life_area", "is required"),
        ("opens_at", "is required"),
    ]


def test_lists_of_ids_are_capped_and_each_id_judged() -> None:
    assert judge(auth_pb2.GetUsersRequest(ids=[UUID] * 100)) == []
    assert judge(auth_pb2.GetUsersRequest(ids=[UUID] * 101)) == [("ids", "must have at most 100 items")]
    assert judge(notifications_pb2.MarkReadRequest(ids=[UUID, "nope"])) == [("ids[1]", "must be a UUID")]
    # A blank item is refused (schemathesis found {"ids": [""]} a 500 when it was not).
    assert judge(notifications_pb2.MarkReadRequest(ids=["", " "])) == [
        ("ids[0]", "is required"),
        ("ids[1]", "is required"),
    ]


def test_mark_read_takes_exactly_one_of_ids_and_up_to() -> None:
    neither = [("ids", "exactly one of ids and up_to"), ("up_to", "exactly one of ids and up_to")]
    assert judge(notifications_pb2.MarkReadRequest()) == neither
    assert judge(notifications_pb2.MarkReadRequest(up_to="  ")) == neither
    assert judge(notifications_pb2.MarkReadRequest(ids=[UUID], up_to=UUID)) == neither
    assert judge(notifications_pb2.MarkReadRequest(ids=[UUID])) == []
    assert judge(notifications_pb2.MarkReadRequest(up_to=UUID)) == []


def test_recipient_names_collapse_spaces_and_emails_are_optional() -> None:
    request = recipients_pb2.CreateRecipientRequest(name="  Grand   Ma ", email="")
    assert judge(request) == [] and request.name == "Grand Ma"
    assert judge(recipients_pb2.CreateRecipientRequest(name="   ", email="nope")) == [
        ("name", "is required"),
        ("email", "must be an email address such as name@example.com"),
    ]


def test_without_declared_rules_only_hostile_input_is_refused() -> None:
    check = request_checker(auth_pb2.SignUpRequest.DESCRIPTOR, declared=False)
    assert check is not None
    assert check(auth_pb2.SignUpRequest(username="!", first_name="nul\x00")) == [
        ("first_name", "must not contain a NUL character or a lone surrogate")
    ]
