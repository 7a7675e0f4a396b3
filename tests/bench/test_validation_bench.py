"""bench.validation runs (a few calls per loop, no timing asserted): the protovalidate copies of the
request types are built, find the same violations as our rules (the bench exits otherwise), and the
table has a row per request and case."""

from __future__ import annotations

import re

import pytest

from bench import validation


def test_the_validation_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert validation.main(["--repeat", "1", "--number", "3"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("request"))
    assert header.split() == [
        "request",
        "case",
        "bytes",
        "parse",
        "walk",
        "walk+pv",
        "ours",
        "pv",
        "rules",
        "our",
        "rules",
        "walk+pv/ours",
    ]
    for name in ("CreateCapsuleRequest", "SignUpRequest", "CreateReplyRequest", "LogInRequest"):
        rows = [line.split() for line in out.splitlines() if line.startswith(name + " ")]
        assert [row[1] for row in rows] == ["valid", rows[1][1]] and rows[1][2] == "violations", out
        # The last eight: bytes, parse, walk, walk+pv, ours (µs, all timed), then two differences and a ratio.
        assert all(float(figure) > 0 for row in rows for figure in row[-7:-3]), out
    assert re.search(r"CreateCapsuleRequest: [a-z_, ]*recipient_id", out), out
    assert "protovalidate 2." in out and "import protovalidate" in out


def test_the_copies_carry_buf_validate_rules() -> None:
    """The copy of SignUpRequest: the declared rules as buf.validate options, field by field."""
    protovalidate = pytest.importorskip("protovalidate")
    from capsule.auth.v1 import auth_pb2

    validate_file = protovalidate.ViolationPb.desc().file.proto.to_binary()
    copies = validation.Copies(validate_file, [auth_pb2.SignUpRequest.DESCRIPTOR])
    copy = copies.classes["capsule.auth.v1.SignUpRequest"].DESCRIPTOR
    assert copy.full_name == "bench.protovalidate.capsule.auth.v1.SignUpRequest"
    # Read with the copies' pool's own classes (GetOptions() gives the default pool's FieldOptions).
    (message,) = copies.file_proto.FromString(copy.file.serialized_pb).message_type
    rules = {field.name: field.options.Extensions[copies.field_ext] for field in message.field}
    assert rules["email"].required and rules["email"].string.email and rules["email"].string.max_len == 254
    assert rules["username"].string.pattern == "^[a-z0-9_.]{3,30}$"
    assert rules["password"].string.min_len == 8 and rules["password"].string.pattern == r"\S"
    assert rules["first_name"].string.pattern == validation.SINGLE_LINE and rules["first_name"].ignore
    assert rules["avatar_url"].string.uri and rules["avatar_url"].string.prefix == "https://"
    assert "GB" in getattr(rules["country"].string, "in")
