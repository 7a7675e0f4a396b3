"""Unit tests of the shared plumbing that needs no server: pagination tokens, error statuses,
access-token verification. (The same code is exercised end to end in tests/auth.)"""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
import jwt
import pytest
from capsule.common.v1 import common_pb2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from services.common.errors import AlreadyExists, FieldErrors, InvalidArgument, Unauthenticated
from services.common.pagination import (
    PageTokenKeys,
    decode_page_token,
    encode_page_token,
    page_after,
    page_size,
    sign_cursor,
    take_page,
)
from services.common.settings import page_token_keys
from services.common.tokens import AccessTokenVerifier


def test_page_size_defaults_caps_and_refuses_negative() -> None:
    assert page_size(0) == 20
    assert page_size(7) == 7
    assert page_size(1000) == 100
    assert page_size(0, default=10, maximum=50) == 10
    with pytest.raises(InvalidArgument) as caught:
        page_size(-1)
    assert caught.value.violations[0][0] == "page_size"


KEYS = PageTokenKeys.parse("k1:first-secret-0123456789")
ALICE, BOB = uuid.uuid4(), uuid.uuid4()


def _refused(token: str, list_name: str = "inbox", arity: int = 3, **kwargs: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, list_name, arity, **{"caller": ALICE, "verifying": KEYS, **kwargs})  # type: ignore[arg-type]
    assert caught.value.reason == "MALFORMED_PAGE_TOKEN"
    assert caught.value.violations[0][0] == "page_token"


def test_page_token_round_trip_and_tamper_detection() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    token = encode_page_token("inbox", [when, "abc", 42], caller=ALICE, signing=KEYS)
    assert decode_page_token(token, "inbox", 3, caller=ALICE, verifying=KEYS) == [when, "abc", 42]
    assert decode_page_token("", "inbox", 3, caller=ALICE, verifying=KEYS) is None
    for bad in (
        "%%%",
        "AAAA",
        "k1.AAAA",
        "k1..",
        token[:-3],
        encode_page_token("outbox", [when, "abc", 42], caller=ALICE, signing=KEYS),
    ):
        _refused(bad)
    # Any one character changed anywhere (key id, payload, tag) is refused.
    for at in range(len(token)):
        if token[at] != ".":
            _refused(token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :])


def test_a_page_token_is_bound_to_its_caller() -> None:
    token = encode_page_token("inbox", ["abc"], caller=ALICE, signing=KEYS)
    _refused(token, arity=1, caller=BOB)
    _refused(token, arity=1, caller=None)  # nor is it a token of a public list
    public = encode_page_token("themes", ["abc"], caller=None, signing=KEYS)
    assert decode_page_token(public, "themes", 1, caller=None, verifying=KEYS) == ["abc"]
    _refused(public, "themes", 1, caller=ALICE)


def test_page_tokens_survive_one_key_rotation() -> None:
    before = PageTokenKeys.parse("k1:first-secret-0123456789")
    after = PageTokenKeys.parse("k2:second-secret-012345678, k1:first-secret-0123456789")
    dropped = PageTokenKeys.parse("k2:second-secret-012345678")
    old = encode_page_token("inbox", ["abc"], caller=ALICE, signing=before)
    assert old.startswith("k1.")
    assert decode_page_token(old, "inbox", 1, caller=ALICE, verifying=after) == ["abc"]
    new = encode_page_token("inbox", ["abc"], caller=ALICE, signing=after)
    assert new.startswith("k2.")  # the first key signs
    assert decode_page_token(new, "inbox", 1, caller=ALICE, verifying=after) == ["abc"]
    _refused(old, arity=1, verifying=dropped)  # once the previous key is gone, so are its tokens
    # A key id that names another key's secret is no way round the tag.
    _refused("k2" + old[2:], arity=1, verifying=after)


def _cursor(list_name: str, **key: object) -> common_pb2.PageCursor:
    cursor = common_pb2.PageCursor(list=list_name)
    cursor.keys.add(**key)
    return cursor


def _unsigned(cursor: common_pb2.PageCursor) -> str:
    # The format before tokens were signed: base64url of the cursor.
    return base64.urlsafe_b64encode(cursor.SerializeToString()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ({"time": timestamp_pb2.Timestamp(seconds=2**62)}, datetime),
        ({"time": timestamp_pb2.Timestamp(seconds=-(2**62))}, datetime),
        ({"time": timestamp_pb2.Timestamp(seconds=0, nanos=2**31 - 1)}, datetime),
        ({"time": timestamp_pb2.Timestamp(seconds=0, nanos=-1)}, datetime),
        ({"integer": 2**62}, int),
        ({"integer": -(2**31) - 1}, int),
        ({"text": "a\x00b"}, str),
        ({"text": "x" * 1001}, str),
    ],
)
def test_odd_sort_keys_are_refused_signed_or_not(key: dict[str, object], kind: type) -> None:
    cursor = _cursor("inbox", **key)
    _refused(_unsigned(cursor), arity=1)
    # Even a token we signed (a bug, an old format) cannot carry a key SQL would choke on.
    signed = sign_cursor(cursor, caller=ALICE, signing=KEYS)
    with pytest.raises(InvalidArgument) as caught:
        page_after(signed, "inbox", kind, caller=ALICE, keys=KEYS)
    assert caught.value.reason == "MALFORMED_PAGE_TOKEN"


def test_page_after_types_the_sort_key_and_refuses_other_kinds() -> None:
    when = datetime(2030, 1, 2, tzinfo=UTC)
    row_id = uuid.uuid4()

    def token_of(keys: list[object]) -> str:
        return encode_page_token("inbox", keys, caller=ALICE, signing=KEYS)  # type: ignore[arg-type]

    token = token_of([when, row_id])
    assert token == token_of([when, str(row_id)])  # a UUID travels as its text
    assert page_after(token, "inbox", datetime, uuid.UUID, caller=ALICE, keys=KEYS) == (when, row_id)
    assert page_after("", "inbox", datetime, uuid.UUID, caller=ALICE, keys=KEYS) is None
    for bad, kinds in (
        (token_of([when, "not a uuid"]), (datetime, uuid.UUID)),
        (token_of(["text", str(row_id)]), (datetime, uuid.UUID)),
        (token_of([7, "name"]), (str, str)),
        (token, (uuid.UUID,)),
    ):
        with pytest.raises(InvalidArgument) as caught:
            page_after(bad, "inbox", *kinds, caller=ALICE, keys=KEYS)
        assert caught.value.reason == "MALFORMED_PAGE_TOKEN"
        assert caught.value.violations[0][0] == "page_token"


def test_take_page_cuts_the_extra_row_into_a_token() -> None:
    rows = [(i, f"n{i}") for i in range(4)]
    assert take_page(rows[:3], 3, "l", lambda r: [r[0], r[1]], caller=ALICE, keys=KEYS) == (rows[:3], "")
    page, token = take_page(rows, 3, "l", lambda r: [r[0], r[1]], caller=ALICE, keys=KEYS)
    assert page == rows[:3]
    assert page_after(token, "l", int, str, caller=ALICE, keys=KEYS) == (2, "n2")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "PAGE_TOKEN_KEYS is not set"),
        ({"PAGE_TOKEN_KEYS": " "}, "PAGE_TOKEN_KEYS is not set"),
        ({"PAGE_TOKEN_KEYS": "k1"}, "kid:secret"),
        ({"PAGE_TOKEN_KEYS": "k1:short"}, "at least 16 bytes"),
        ({"PAGE_TOKEN_KEYS": "bad kid:0123456789abcdef"}, "key id"),
        ({"PAGE_TOKEN_KEYS": "k1:0123456789abcdef,k1:fedcba9876543210"}, "must differ"),
        ({"PAGE_TOKEN_KEYS_FILE": "/nonexistent/page-token-keys"}, "cannot be read"),
    ],
)
def test_a_service_without_usable_page_token_keys_does_not_start(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAGE_TOKEN_KEYS", raising=False)
    monkeypatch.delenv("PAGE_TOKEN_KEYS_FILE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as caught:
        page_token_keys()
    assert message in str(caught.value)
    assert "0123456789abcdef" not in str(caught.value)  # a secret is never printed


def test_page_token_keys_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "keys").write_text("k2:second-secret-012345678,k1:first-secret-0123456789\n")
    monkeypatch.delenv("PAGE_TOKEN_KEYS", raising=False)
    monkeypatch.setenv("PAGE_TOKEN_KEYS_FILE", str(tmp_path / "keys"))
    assert [kid for kid, _ in page_token_keys().keys] == ["k2", "k1"]


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
