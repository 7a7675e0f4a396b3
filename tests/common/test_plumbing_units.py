"""Unit tests of the shared plumbing that needs no server: pagination tokens, error statuses,
access-token verification. (The same code is exercised end to end in tests/auth.)"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.rpc import error_details_pb2, status_pb2

from services.common.errors import AlreadyExists, FieldErrors, InvalidArgument, Unauthenticated
from services.common.pagination import decode_page_token, encode_page_token, page_after, page_size, take_page
from services.common.tokens import AccessTokenVerifier


def test_page_size_defaults_caps_and_refuses_negative() -> None:
    assert page_size(0) == 20
    assert page_size(7) == 7
    assert page_size(1000) == 100
    assert page_size(0, default=10, maximum=50) == 10
    with pytest.raises(InvalidArgument) as caught:
        page_size(-1)
    assert caught.value.violations[0][0] == "page_size"


def test_page_token_round_trip_and_tamper_detection() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    token = encode_page_token("inbox", [when, "abc", 42])
    assert decode_page_token(token, "inbox", 3) == [when, "abc", 42]
    assert decode_page_token("", "inbox", 3) is None
    for bad in ("%%%", "AAAA", token[:-3], encode_page_token("outbox", [when, "abc", 42])):
        with pytest.raises(InvalidArgument) as caught:
            decode_page_token(bad, "inbox", 3)
        assert caught.value.reason == "MALFORMED_PAGE_TOKEN"


def test_page_after_types_the_sort_key_and_refuses_other_kinds() -> None:
    when = datetime(2030, 1, 2, tzinfo=UTC)
    row_id = uuid.uuid4()
    token = encode_page_token("inbox", [when, row_id])
    assert token == encode_page_token("inbox", [when, str(row_id)])  # a UUID travels as its text
    assert page_after(token, "inbox", datetime, uuid.UUID) == (when, row_id)
    assert page_after("", "inbox", datetime, uuid.UUID) is None
    for bad, kinds in (
        (encode_page_token("inbox", [when, "not a uuid"]), (datetime, uuid.UUID)),
        (encode_page_token("inbox", ["text", str(row_id)]), (datetime, uuid.UUID)),
        (encode_page_token("inbox", [7, "name"]), (str, str)),
        (token, (uuid.UUID,)),
    ):
        with pytest.raises(InvalidArgument) as caught:
            page_after(bad, "inbox", *kinds)
        assert caught.value.reason == "MALFORMED_PAGE_TOKEN"
        assert caught.value.violations[0][0] == "page_token"


def test_take_page_cuts_the_extra_row_into_a_token() -> None:
    rows = [(i, f"n{i}") for i in range(4)]
    assert take_page(rows[:3], 3, "l", lambda r: [r[0], r[1]]) == (rows[:3], "")
    page, token = take_page(rows, 3, "l", lambda r: [r[0], r[1]])
    assert page == rows[:3]
    assert page_after(token, "l", int, str) == (2, "n2")


def test_service_error_carries_reason_and_field_violations() -> None:
    errors = FieldErrors()
    errors.add("email", "is required")
    errors.add("user.first_name", "too long")
    with pytest.raises(InvalidArgument) as caught:
        errors.raise_if_any()
    status = caught.value.to_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    (key, raw), *_ = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    decoded = status_pb2.Status.FromString(raw)
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert decoded.details[0].Unpack(info) and info.reason == "INVALID_FIELDS"
    assert decoded.details[1].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("email", "is required"),
        ("user.first_name", "too long"),
    ]
    assert AlreadyExists("x", reason="EMAIL_TAKEN").to_status().code == grpc.StatusCode.ALREADY_EXISTS


def _token(key: Ed25519PrivateKey, **overrides: object) -> str:
    now = int(time.time())
    claims = {"iss": "iss", "aud": "aud", "sub": str(uuid.uuid4()), "sid": "s", "iat": now, "exp": now + 60}
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="EdDSA")


def test_access_token_verification() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    verifier = AccessTokenVerifier(key.public_key(), issuer="iss", audience="aud")
    user_id = uuid.uuid4()
    good = _token(key, sub=str(user_id))
    assert verifier.verify(good).user_id == user_id
    assert verifier.verify(good).user_id == user_id  # served from the verified-token cache

    cases = {
        "TOKEN_EXPIRED": _token(key, exp=int(time.time()) - 60),
        "TOKEN_INVALID": _token(other),  # signed by someone else
    }
    cases_invalid = [
        _token(key, aud="elsewhere"),
        _token(key, iss="elsewhere"),
        _token(key, sid=None),
        _token(key, sub="not-a-uuid"),
        good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),  # tampered signature
        jwt.encode({"sub": str(user_id), "exp": int(time.time()) + 60}, "s" * 32, algorithm="HS256"),
        "not.a.jwt",
    ]
    for reason, token in cases.items():
        with pytest.raises(Unauthenticated) as caught:
            verifier.verify(token)
        assert caught.value.reason == reason
    for token in cases_invalid:
        with pytest.raises(Unauthenticated) as caught:
            verifier.verify(token)
        assert caught.value.reason == "TOKEN_INVALID", token
