"""The gateway's own routes (/healthz, /readyz, /openapi.json, /metrics) and its process life."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from capsule.auth.v1 import auth_pb2, auth_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.app import create_app
from gateway.descriptors import http_bindings, load_services
from gateway.settings import Settings
from tests.gateway.conftest import FakeAuth, bound_socket, serve

REPO = Path(__file__).resolve().parents[2]


async def test_healthz(api: httpx.AsyncClient) -> None:
    response = await api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_when_the_upstream_is_up(api: httpx.AsyncClient) -> None:
    response = await api.get("/readyz")
    assert response.status_code == 200, response.text


async def test_readyz_when_the_upstream_is_down(dead_target: str) -> None:
    app = create_app(Settings(upstream=dead_target, ready_timeout_seconds=0.3))
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/readyz")
        healthy = await http.get("/healthz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["reason"] == "DEPENDENCY_UNAVAILABLE"
    assert dead_target not in response.text
    assert healthy.status_code == 200


# OpenAPI.


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


async def test_openapi_covers_every_annotated_method(api: httpx.AsyncClient) -> None:
    response = await api.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()

    assert document["openapi"] == "3.1.0"
    assert {"title", "version"} <= set(document["info"])
    operations = {
        (verb.upper(), path): operation for path, item in document["paths"].items() for verb, operation in item.items()
    }
    expected = {
        ("POST", "/v1/auth:signup"): "SignUp",
        ("POST", "/v1/auth:login"): "LogIn",
        ("POST", "/v1/auth:refresh"): "Refresh",
        ("POST", "/v1/auth:logout"): "LogOut",
        ("GET", "/v1/me"): "GetMe",
        ("PATCH", "/v1/me"): "UpdateMe",
        ("DELETE", "/v1/me"): "DeleteMe",
        ("GET", "/v1/usernames/{username}"): "CheckUsername",
        ("GET", "/v1/users:search"): "SearchUsers",
    }
    assert {key: op["operationId"] for key, op in operations.items()} == expected
    # ... which is every binding the descriptors declare (GetUsers has none).
    bindings = http_bindings(load_services(["capsule.auth.v1.auth_pb2"]))
    assert {(b.verb, b.template) for b in bindings} == set(expected)

    for ref in refs(document):
        assert resolve(document, ref) is not None, ref
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


async def test_openapi_parameters_and_schemas(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]

    check = document["paths"]["/v1/usernames/{username}"]["get"]
    [username] = check["parameters"]
    # The declared rule and example (protos: (capsule.common.v1.field)).
    assert (username["name"], username["in"], username["required"], username["example"]) == (
        "username",
        "path",
        True,
        "ada_l",
    )
    assert username["schema"]["pattern"] == "^[a-z0-9_.]{3,30}$"
    assert check["security"] == []  # no token needed

    search = document["paths"]["/v1/users:search"]["get"]
    assert [(p["name"], p["in"], p.get("required", False)) for p in search["parameters"]] == [
        ("query", "query", True),
        ("pageSize", "query", False),
        ("pageToken", "query", False),
    ]
    assert search["parameters"][1]["schema"] == {"type": "integer", "format": "int32", "minimum": 0, "examples": [20]}
    assert search["security"] == [{"bearerAuth": []}]

    update = document["paths"]["/v1/me"]["patch"]
    body = update["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/capsule.auth.v1.User"}
    assert body["content"]["application/json"]["example"]["username"] == "ada_l"
    assert [p.get("name") for p in update["parameters"] if "name" in p] == ["updateMask"]
    # One problem+json response per status the operation can answer.
    assert set(update["responses"]) == {"200", "400", "401", "409", "413", "415", "429", "500", "503", "504"}
    assert update["responses"]["409"]["$ref"] == "#/components/responses/Problem409"
    problem409 = document["components"]["responses"]["Problem409"]["content"]["application/problem+json"]
    assert problem409["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert problem409["example"]["status"] == 409

    user = schemas["capsule.auth.v1.User"]
    assert user["properties"]["createdAt"] == {"type": "string", "format": "date-time", "readOnly": True}
    assert user["properties"]["firstName"]["maxLength"] == 100
    assert user["additionalProperties"] is False
    assert schemas["capsule.auth.v1.SignUpRequest"]["required"] == ["email", "username", "password"]
    assert schemas["capsule.auth.v1.CheckUsernameResponse"]["properties"]["available"] == {"type": "boolean"}
    assert schemas["capsule.auth.v1.SearchUsersResponse"]["properties"]["users"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/capsule.common.v1.PublicProfile"},
    }
    assert document["paths"]["/v1/auth:logout"]["post"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ] == {"type": "object"}
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "detail", "reason", "fieldViolations"}


# Metrics.


async def test_metrics_count_requests_by_route_template(api: httpx.AsyncClient) -> None:
    await api.get("/v1/usernames/someone")
    await api.get("/v1/not-a-route")
    response = await api.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'gateway_http_requests_total{method="GET",route="/v1/usernames/{username}",status="200"}' in text
    assert 'gateway_http_requests_total{method="GET",route="unmatched",status="404"}' in text
    assert "someone" not in text
    assert 'gateway_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/usernames/{username}"}' in (
        text
    )


# How the upstream's rich errors are read: grpc_status's helper works on grpc.aio errors too.


async def test_rich_status_is_readable_from_a_grpc_aio_error(upstream_target: str) -> None:
    async with grpc.aio.insecure_channel(upstream_target) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SignUp(auth_pb2.SignUpRequest(email="fail:NOT_FOUND"))
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "TEST_NOT_FOUND"


# The process: `python -m gateway` serves until SIGTERM, then exits 0.


async def test_the_process_drains_and_exits_0_on_sigterm(upstream_target: str, fake_auth: FakeAuth) -> None:
    reserved = bound_socket()
    port = reserved.getsockname()[1]
    reserved.close()  # uvicorn binds it itself; the window for another taker is tiny
    env = {
        **os.environ,
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_UPSTREAM": upstream_target,
        "LOG_LEVEL": "debug",
        "PYTHONUNBUFFERED": "1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", cwd=REPO, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while "Uvicorn running on" not in (line := (await process.stderr.readline()).decode()):
                assert line, "gateway exited early:\n" + "".join(lines)
                lines.append(line)
            lines.append(line)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                response = await http.get("/v1/usernames/proc")
                assert response.status_code == 200, response.text
                assert response.json() == {"username": "proc", "available": True}

                # A call in flight when SIGTERM arrives still gets its answer.
                fake_auth.held.clear()
                fake_auth.release.clear()
                in_flight = asyncio.create_task(http.post("/v1/auth:logout", json={"refreshToken": "hold"}))
                await fake_auth.held.wait()
                process.send_signal(signal.SIGTERM)
                while "Shutting down" not in (line := (await process.stderr.readline()).decode()):
                    assert line, "gateway exited early:\n" + "".join(lines)
                    lines.append(line)
                lines.append(line)
                fake_auth.release.set()
                drained = await in_flight
            assert drained.status_code == 200, drained.text
            rest = (await process.stderr.read()).decode()
            assert await process.wait() == 0, rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    # Logs are JSON, one object per line (gRPC's C core may print its own lines: skipped here);
    # at debug level, one line per request.
    records = [json.loads(line) for line in [*lines, *rest.splitlines()] if line.startswith("{")]
    assert any(r["message"].startswith("Uvicorn running on") for r in records)
    access = [r for r in records if r["logger"] == "gateway.access"]
    assert [(r["route"], r["status"]) for r in access] == [("/v1/usernames/{username}", 200), ("/v1/auth:logout", 200)]
    assert re.fullmatch(r"[0-9a-f]{32}", access[0]["request_id"])
