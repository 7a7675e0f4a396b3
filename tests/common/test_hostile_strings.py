"""SPEC §3 "Strings" (issue 11, findings 2 and 6): a NUL or a lone surrogate in any string, and an
enum value outside its declared set, are INVALID_ARGUMENT naming the field, on HTTP and gRPC alike,
and never reach SQL. The check is one descriptor-driven walk of every request in the services'
handler wrapper (services.common.validation.request_checker); the gateway names the field of a
lone surrogate escape in a JSON body, which orjson alone would call malformed JSON."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
import sqlalchemy.exc
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc
from capsule.capsules.v1 import capsules_pb2, capsules_pb2_grpc
from capsule.recipients.v1 import recipients_pb2, recipients_pb2_grpc
from google.protobuf import struct_pb2, type_pb2
from google.rpc import error_details_pb2
from sqlalchemy import text

from gateway.bodies import parse_json
from gateway.problems import rich_status
from launcher.stack import Stack
from services.common.db import Database
from services.common.server import log_unhandled
from services.common.settings import DatabaseSettings
from services.common.validation import NOT_UTF8, NUL_OR_SURROGATE, Undecodable, lenient_parser, request_checker
from tests.auth.test_auth_http import assert_problem, bearer, sign_up
from tests.gateway.test_units import invalid, transcoder
from tests.query_plans import ADMIN_DSN

# --- the walk, on synthetic messages -----------------------------------------------------------


def test_the_walk_names_every_bad_string_and_enum_at_any_depth() -> None:
    check = request_checker(type_pb2.Type.DESCRIPTOR)
    assert check is not None
    message = type_pb2.Type(
        name="ok",
        fields=[type_pb2.Field(name="fine", kind=type_pb2.Field.TYPE_STRING), type_pb2.Field(name="b\x00", kind=99)],
        oneofs=["x", "y\x00"],
        syntax=-1,  # type: ignore[arg-type]
    )
    message.source_context.file_name = "a\x00.proto"
    assert sorted(check(message)) == sorted(
        [
            ("fields[1].name", NUL_OR_SURROGATE),
            ("fields[1].kind", "must be one of " + ", ".join(v.name for v in type_pb2.Field.Kind.DESCRIPTOR.values)),
            ("oneofs[1]", NUL_OR_SURROGATE),
            ("syntax", "must be one of SYNTAX_PROTO2, SYNTAX_PROTO3, SYNTAX_EDITIONS"),
            ("source_context.file_name", NUL_OR_SURROGATE),
        ]
    )
    assert check(type_pb2.Type(name="ok", fields=[type_pb2.Field(name="f", kind=type_pb2.Field.TYPE_BOOL)])) == []


def test_the_walk_reaches_maps_and_recursive_types() -> None:
    check = request_checker(struct_pb2.Struct.DESCRIPTOR)
    assert check is not None
    value = struct_pb2.Struct()
    value.update({"a": "fine", "b": {"c": ["fine", "bad\x00"]}})
    assert check(value) == [("fields.struct_value.fields.list_value.values[1].string_value", NUL_OR_SURROGATE)]
    value.update({"k\x00": 1})
    assert ("fields", "must not have a key with a NUL character or a lone surrogate") in check(value)


def test_a_type_without_strings_or_enums_is_not_walked() -> None:
    assert request_checker(capsules_pb2.GetInboxSummaryRequest.DESCRIPTOR) is None


def test_a_database_error_is_logged_without_its_text(caplog: pytest.LogCaptureFixture) -> None:
    # asyncpg quotes the parameter it could not encode in its message.
    error = asyncpg.DataError("invalid input for query argument $1: 'secret\\x00name'")
    with caplog.at_level(logging.ERROR):
        log_unhandled("/x.Service/Method", error)
    record = caplog.records[-1]
    assert "secret" not in record.getMessage() and record.exc_info is None
    assert "secret" not in str(record.fields)  # type: ignore[attr-defined]
    assert record.fields["error_type"].endswith(".DataError")  # type: ignore[attr-defined]


def test_the_gateway_names_the_field_of_a_lone_surrogate_escape() -> None:
    t = transcoder("POST", "/v1/types", "*")
    body = parse_json(b'{"name": "a\\ud800", "oneofs": ["x"], "fields": [{"name": "\\udfff"}]}')
    assert invalid(lambda: t.request({}, body, [])) == {"name": NUL_OR_SURROGATE, "fields[0].name": NUL_OR_SURROGATE}


# --- through the mesh, over HTTP ---------------------------------------------------------------


async def test_nul_in_a_recipient_name_is_400_naming_the_field(client: httpx.AsyncClient) -> None:
    # Create sets a top-level field; PATCH the nested `recipient.name` (its body is the resource).
    me = bearer(await sign_up(client))
    created = await client.post("/v1/recipients", json={"name": "Aunt\x00May"}, headers=me)
    assert_problem(created, 400, "INVALID_FIELDS", ["name"])
    good = await client.post("/v1/recipients", json={"name": "Aunt May"}, headers=me)
    assert good.status_code == 200, good.text
    patched = await client.patch(f"/v1/recipients/{good.json()['id']}", json={"name": "\x00"}, headers=me)
    assert_problem(patched, 400, "INVALID_FIELDS", ["recipient.name"])
    assert (await client.get(f"/v1/recipients/{good.json()['id']}", headers=me)).json()["name"] == "Aunt May"


async def test_nul_in_a_query_is_400_naming_the_field(client: httpx.AsyncClient) -> None:
    me = bearer(await sign_up(client))
    for path in ("/v1/users:search", "/v1/recipients"):
        response = await client.get(path, params={"query": "ab\x00c"}, headers=me)
        assert_problem(response, 400, "INVALID_FIELDS", ["query"])


async def test_a_lone_surrogate_in_json_is_400_naming_the_field(client: httpx.AsyncClient) -> None:
    me = bearer(await sign_up(client))
    body = b'{"name": "Aunt \\ud800 May"}'
    response = await client.post("/v1/recipients", content=body, headers={**me, "Content-Type": "application/json"})
    assert_problem(response, 400, "INVALID_FIELDS", ["name"])


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/capsules?box=99", "box"),
        ("/v1/capsules?status=77", "status"),
        ("/v1/capsules?status=-1", "status"),
        ("/v1/connection-requests?direction=5", "direction"),
        ("/v1/capsules?box=sideways", "box"),  # by name: refused by the gateway itself
    ],
)
async def test_an_enum_value_outside_its_set_is_400_naming_the_field(
    client: httpx.AsyncClient, path: str, field: str
) -> None:
    me = bearer(await sign_up(client))
    assert_problem(await client.get(path, headers=me), 400, "INVALID_FIELDS", [field])


# --- through Envoy, over gRPC ------------------------------------------------------------------


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with stack.envoy_channel() as channel:
        yield channel


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    status = rich_status(error.trailing_metadata())
    assert status is not None
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            return [v.field for v in bad_request.field_violations]
    raise AssertionError("no BadRequest detail")


async def grpc_session(client: httpx.AsyncClient) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {(await sign_up(client))['accessToken']}"),)


async def test_grpc_nul_in_strings_is_invalid_argument_naming_the_field(
    client: httpx.AsyncClient, channel: grpc.aio.Channel
) -> None:
    metadata = await grpc_session(client)
    recipients = recipients_pb2_grpc.RecipientsServiceStub(channel)
    calls: list[tuple[Any, list[str]]] = [
        (recipients.CreateRecipient(recipients_pb2.CreateRecipientRequest(name="a\x00"), metadata=metadata), ["name"]),
        (recipients.ListRecipients(recipients_pb2.ListRecipientsRequest(query="\x00"), metadata=metadata), ["query"]),
        (
            recipients.UpdateRecipient(
                recipients_pb2.UpdateRecipientRequest(
                    id="0190a3f4-1111-7222-8333-444455556666",
                    recipient=recipients_pb2.Recipient(name="x\x00"),
                    update_mask={"paths": ["name"]},
                ),
                metadata=metadata,
            ),
            ["recipient.name"],
        ),
        (
            auth_pb2_grpc.AuthServiceStub(channel).SearchUsers(
                auth_pb2.SearchUsersRequest(query="ab\x00c"), metadata=metadata
            ),
            ["query"],
        ),
    ]
    for call, fields in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert violations(caught.value) == fields


async def test_grpc_enum_numbers_outside_the_set_are_invalid_argument(
    client: httpx.AsyncClient, channel: grpc.aio.Channel
) -> None:
    metadata = await grpc_session(client)
    capsules = capsules_pb2_grpc.CapsulesServiceStub(channel)
    recipients = recipients_pb2_grpc.RecipientsServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await capsules.ListCapsules(capsules_pb2.ListCapsulesRequest(box=99), metadata=metadata)  # type: ignore[arg-type]
    assert violations(caught.value) == ["box"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await recipients.ListConnectionRequests(
            recipients_pb2.ListConnectionRequestsRequest(direction=7),  # type: ignore[arg-type]
            metadata=metadata,
        )
    assert violations(caught.value) == ["direction"]
    # The declared values still work.
    await capsules.ListCapsules(capsules_pb2.ListCapsulesRequest(box=capsules_pb2.BOX_OUTBOX), metadata=metadata)


async def test_grpc_a_lone_surrogate_is_invalid_argument_naming_the_field(
    client: httpx.AsyncClient, channel: grpc.aio.Channel
) -> None:
    # A Python str holding a lone surrogate cannot be serialized: what reaches a service is its
    # 3-byte encoding (ED A0 80), which protobuf refuses to parse. grpc itself would answer that
    # with UNKNOWN and the parser's exception class in the message.
    metadata = await grpc_session(client)
    request = recipients_pb2.UpdateRecipientRequest(
        id="0190a3f4-1111-7222-8333-444455556666",
        recipient=recipients_pb2.Recipient(name="a-b-c"),
        update_mask={"paths": ["name"]},
    )
    raw = request.SerializeToString().replace(b"a-b-c", b"a\xed\xa0\x80c")
    call = channel.unary_unary("/capsule.recipients.v1.RecipientsService/UpdateRecipient")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(raw, metadata=metadata)
    assert violations(caught.value) == ["recipient.name"]
    assert "DecodeError" not in (caught.value.details() or "")
    # Broken in another way (truncated): still INVALID_ARGUMENT, with no field to name.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"\x0a\x05ab", metadata=metadata)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_the_wire_scan_names_the_string_that_is_not_utf8() -> None:
    message = type_pb2.Type(name="t", fields=[type_pb2.Field(name="ok"), type_pb2.Field(name="b-d")], oneofs=["x"])
    raw = message.SerializeToString().replace(b"b-d", b"b\xed\xb0\x80")
    found = lenient_parser(type_pb2.Type)(raw)
    assert isinstance(found, Undecodable)
    assert found.error().violations == [("fields[1].name", NOT_UTF8)]
    assert isinstance(lenient_parser(type_pb2.Type)(message.SerializeToString()), type_pb2.Type)


async def test_a_failed_statement_does_not_carry_its_parameters() -> None:
    # The NUL no request can bring any more, sent straight to Postgres, which refuses it.
    db = Database(DatabaseSettings(ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://"), pool_size=1))
    try:
        with pytest.raises(sqlalchemy.exc.DBAPIError) as caught:
            async with db.read() as conn:
                await conn.execute(text("SELECT CAST(:name AS text)"), {"name": "secret\x00name"})
        assert "secret" not in str(caught.value)
        assert "hidden due to hide_parameters" in str(caught.value)
    finally:
        await db.close()
