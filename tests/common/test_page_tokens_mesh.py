"""Page tokens through the real mesh (SPEC §3, issue 11 finding 3): a token is good only for the
list and the caller it was issued to; edited or forged tokens are 400 MALFORMED_PAGE_TOKEN over
HTTP and INVALID_ARGUMENT over gRPC, never a 500 and never someone else's page.

The forged tokens are in the format tokens had before they were signed (base64url of the
PageCursor), carrying the sort keys that used to reach Postgres and fail there."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from typing import Any

import grpc
import httpx
import pytest
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc
from capsule.capsules.v1 import capsules_pb2, capsules_pb2_grpc
from capsule.common.v1 import common_pb2
from capsule.recipients.v1 import recipients_pb2, recipients_pb2_grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from launcher.bootstrap import REPO
from launcher.stack import Stack
from tests.auth.test_auth_http import assert_problem
from tests.recipients.helpers import bearer, new_user


def forged(list_name: str, *keys: dict[str, Any]) -> str:
    cursor = common_pb2.PageCursor(list=list_name)
    for key in keys:
        cursor.keys.add(**key)
    return base64.urlsafe_b64encode(cursor.SerializeToString()).rstrip(b"=").decode()


def text(value: str) -> dict[str, Any]:
    return {"text": value}


def time(seconds: int, nanos: int = 0) -> dict[str, Any]:
    return {"time": timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)}


ROW = text(str(uuid.uuid4()))
# (HTTP path, its query, a forged token for that very list), each once a 500.
HOSTILE = [
    pytest.param("/v1/capsules", {}, forged("capsules:inbox:", time(2**62), ROW), id="seconds-2^62"),
    pytest.param("/v1/capsules", {}, forged("capsules:inbox:", time(-(2**62)), ROW), id="seconds--2^62"),
    pytest.param("/v1/capsules", {}, forged("capsules:inbox:", time(0, 2**31 - 1), ROW), id="nanos-2^31-1"),
    pytest.param(
        "/v1/users:search", {"query": "abc"}, forged("users:search:abc", {"integer": 2**62}, text("x")), id="tier-2^62"
    ),
    pytest.param("/v1/recipients", {}, forged("recipients:", text("a\x00b"), ROW), id="nul-key"),
    # Well-formed keys of the right kinds, for the right list, but not issued by the service.
    pytest.param("/v1/blocks", {}, forged("blocks", ROW), id="unsigned-blocks"),
    pytest.param("/v1/connections", {}, forged("connections", ROW), id="unsigned-connections"),
]


async def recipients_token(client: httpx.AsyncClient, owner: dict[str, Any]) -> str:
    """A next-page token of `owner`'s recipients list (two recipients, pages of one)."""
    for name in ("Ann", "Bea"):
        created = await client.post("/v1/recipients", json={"name": name}, headers=bearer(owner))
        assert created.status_code == 200, created.text
    page = await client.get("/v1/recipients", params={"pageSize": 1}, headers=bearer(owner))
    assert page.status_code == 200, page.text
    token = page.json()["nextPageToken"]
    assert token
    return str(token)


async def test_a_token_is_refused_to_another_caller(client: httpx.AsyncClient) -> None:
    a, b = await new_user(client), await new_user(client)
    token_a = await recipients_token(client, a)
    await recipients_token(client, b)  # B has rows of their own after A's key: a page to leak
    mine = await client.get("/v1/recipients", params={"pageSize": 1, "pageToken": token_a}, headers=bearer(a))
    assert mine.status_code == 200 and [r["name"] for r in mine.json()["recipients"]] == ["Bea"]
    replayed = await client.get("/v1/recipients", params={"pageSize": 1, "pageToken": token_a}, headers=bearer(b))
    assert_problem(replayed, 400, "MALFORMED_PAGE_TOKEN", ["pageToken"])


async def test_a_token_is_refused_on_another_list(client: httpx.AsyncClient) -> None:
    a = await new_user(client)
    token = await recipients_token(client, a)
    for path, params in (
        ("/v1/recipients", {"query": "a"}),  # the same rows, another filter
        ("/v1/connections", {}),
        ("/v1/blocks", {}),
        ("/v1/connection-requests", {}),
        ("/v1/capsules", {}),
        ("/v1/users:search", {"query": "ann"}),
        ("/v1/themes", {}),
    ):
        answer = await client.get(path, params={**params, "pageToken": token}, headers=bearer(a))
        assert_problem(answer, 400, "MALFORMED_PAGE_TOKEN", ["pageToken"])


async def test_an_edited_token_is_refused(client: httpx.AsyncClient) -> None:
    a = await new_user(client)
    token = await recipients_token(client, a)
    for at in (0, len(token) // 2, len(token) - 1):
        if token[at] == ".":
            at += 1
        edited = token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]
        answer = await client.get("/v1/recipients", params={"pageToken": edited}, headers=bearer(a))
        assert_problem(answer, 400, "MALFORMED_PAGE_TOKEN", ["pageToken"])
    # A NUL character is a token we never issued too (not the generic string rule's INVALID_FIELDS).
    nul = await client.get("/v1/recipients", params={"pageToken": token[:5] + "\x00" + token[5:]}, headers=bearer(a))
    assert_problem(nul, 400, "MALFORMED_PAGE_TOKEN", ["pageToken"])


@pytest.mark.parametrize(("path", "params", "token"), HOSTILE)
async def test_forged_tokens_are_400_over_http(
    client: httpx.AsyncClient, path: str, params: dict[str, str], token: str
) -> None:
    a = await new_user(client)
    answer = await client.get(path, params={**params, "pageToken": token}, headers=bearer(a))
    assert_problem(answer, 400, "MALFORMED_PAGE_TOKEN", ["pageToken"])


def assert_malformed(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    reasons, fields = [], []
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reasons.append(info.reason)
        elif detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    assert reasons == ["MALFORMED_PAGE_TOKEN"] and fields == ["page_token"], status


async def test_forged_and_replayed_tokens_are_invalid_argument_over_grpc(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    a, b = await new_user(client), await new_user(client)
    token_a = await recipients_token(client, a)
    as_a = (("authorization", f"Bearer {a['accessToken']}"),)
    as_b = (("authorization", f"Bearer {b['accessToken']}"),)
    async with stack.envoy_channel() as channel:
        capsules = capsules_pb2_grpc.CapsulesServiceStub(channel)
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        recipients = recipients_pb2_grpc.RecipientsServiceStub(channel)
        calls = [
            recipients.ListRecipients(recipients_pb2.ListRecipientsRequest(page_token=token_a), metadata=as_b),
            recipients.ListConnections(recipients_pb2.ListConnectionsRequest(page_token=token_a), metadata=as_a),
        ]
        for when in (time(2**62), time(-(2**62)), time(0, 2**31 - 1)):
            request = capsules_pb2.ListCapsulesRequest(page_token=forged("capsules:inbox:", when, ROW))
            calls.append(capsules.ListCapsules(request, metadata=as_a))
        search = forged("users:search:abc", {"integer": 2**62}, text("x"))
        calls.append(auth.SearchUsers(auth_pb2.SearchUsersRequest(query="abc", page_token=search), metadata=as_a))
        nul = forged("recipients:", text("a\x00b"), ROW)
        calls.append(recipients.ListRecipients(recipients_pb2.ListRecipientsRequest(page_token=nul), metadata=as_a))
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert_malformed(caught.value)


async def test_a_public_list_token_serves_anyone(client: httpx.AsyncClient) -> None:
    a, b = await new_user(client), await new_user(client)
    first = await client.get("/v1/themes", params={"pageSize": 2}, headers=bearer(a))
    token = first.json()["nextPageToken"]
    assert token
    for headers in (bearer(a), bearer(b), {}):
        second = await client.get("/v1/themes", params={"pageSize": 2, "pageToken": token}, headers=headers)
        assert second.status_code == 200, second.text
        assert len(second.json()["themes"]) == 2


def test_a_service_without_page_token_keys_refuses_to_start() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGE_TOKEN_KEYS")}
    env.update(GRPC_LISTEN="127.0.0.1:1", ADMIN_LISTEN="127.0.0.1:1")
    result = subprocess.run(
        [sys.executable, "-m", "services.recipients"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "PAGE_TOKEN_KEYS is not set" in result.stderr, result.stderr[-2000:]
