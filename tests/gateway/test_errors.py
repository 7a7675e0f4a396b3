"""Errors: upstream statuses mapped per SPEC §3, and the gateway's own precise 4xx answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from gateway.app import create_app
from gateway.calls import Call, Next, Reply
from gateway.settings import Settings
from tests.gateway.conftest import serve

if TYPE_CHECKING:
    from tests.gateway.conftest import FakeAuth

PROBLEM_KEYS = {"type", "title", "status", "detail", "reason", "fieldViolations"}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) == PROBLEM_KEYS
    assert body["status"] == status
    return body


def violations(body: dict[str, Any]) -> dict[str, str]:
    return {v["field"]: v["description"] for v in body["fieldViolations"]}


# Upstream statuses.

STATUS_MAP = [
    ("INVALID_ARGUMENT", 400),
    ("FAILED_PRECONDITION", 400),
    ("OUT_OF_RANGE", 400),
    ("UNAUTHENTICATED", 401),
    ("PERMISSION_DENIED", 403),
    ("NOT_FOUND", 404),
    ("ALREADY_EXISTS", 409),
    ("ABORTED", 409),
    ("RESOURCE_EXHAUSTED", 429),
    ("UNAVAILABLE", 503),
    ("DEADLINE_EXCEEDED", 504),
    ("INTERNAL", 500),
    ("UNKNOWN", 500),
    ("UNIMPLEMENTED", 500),
    ("DATA_LOSS", 500),
    ("CANCELLED", 500),
]


@pytest.mark.parametrize(("code", "status"), STATUS_MAP)
async def test_rich_statuses_map_to_http(api: httpx.AsyncClient, code: str, status: int) -> None:
    response = await api.post("/v1/auth:signup", json={"email": f"fail:{code}"})

    body = problem(response, status)
    assert body["reason"] == f"TEST_{code}"
    # Services name fields by proto path; clients read them in lowerCamelCase.
    assert body["fieldViolations"] == [
        {"field": "firstName", "description": "is too long"},
        {"field": "user.firstName", "description": "is required"},
        {"field": "ids[2]", "description": "must be a UUID"},
    ]
    if status == 500:
        assert body["detail"] == "The server failed to handle the request."
    else:
        assert body["detail"] == f"test failure {code}"
    assert ("www-authenticate" in response.headers) == (status == 401)
    assert response.headers["retry-after"] == "3"


async def test_unauthenticated_asks_for_a_bearer_token(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/auth:refresh", json={"refreshToken": "fail:UNAUTHENTICATED"})
    problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("code", "status", "reason", "detail"),
    [
        ("UNAVAILABLE", 503, "DEPENDENCY_UNAVAILABLE", "The service is unavailable; try again shortly."),
        ("INTERNAL", 500, "INTERNAL", "The server failed to handle the request."),
        ("NOT_FOUND", 404, "NOT_FOUND", "connect to 10.1.2.3:5432 failed: secret internals"),
    ],
)
async def test_statuses_without_details_get_a_default_reason_and_no_leaked_5xx_detail(
    api: httpx.AsyncClient, code: str, status: int, reason: str, detail: str
) -> None:
    response = await api.post("/v1/auth:signup", json={"email": f"plain:{code}"})
    body = problem(response, status)
    assert body["reason"] == reason
    assert body["detail"] == detail
    assert body["fieldViolations"] == []


async def test_the_deadline_becomes_504(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/auth:signup", json={"email": "hang"}, headers={"Grpc-Timeout": "200m"})
    body = problem(response, 504)
    assert body["reason"] == "DEADLINE_EXCEEDED"


# The gateway's own errors.


async def test_malformed_json(api: httpx.AsyncClient, fake_auth: FakeAuth) -> None:
    calls = len(fake_auth.calls)
    response = await api.post(
        "/v1/auth:signup", content=b'{"email": "a@b.c",', headers={"Content-Type": "application/json"}
    )
    body = problem(response, 400)
    assert body["reason"] == "MALFORMED_JSON"
    assert len(fake_auth.calls) == calls  # nothing reached the service


async def test_wrong_types_and_unknown_fields_are_all_named(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/auth:signup", json={"email": 5, "username": ["x"], "first_name": None, "nickname": "x", "password": True}
    )
    body = problem(response, 400)
    assert body["reason"] == "INVALID_FIELDS"
    assert violations(body) == {
        "email": "must be a string",
        "username": "must be a string",
        "nickname": "is not a field of SignUpRequest",
        "password": "must be a string",
    }


async def test_nested_body_field_violations_carry_the_body_field(api: httpx.AsyncClient) -> None:
    response = await api.patch("/v1/me", json={"firstName": 1, "createdAt": "yesterday"})
    body = problem(response, 400)
    assert violations(body) == {
        "user.firstName": "must be a string",
        "user.createdAt": "must be an RFC 3339 timestamp such as 2030-01-31T09:00:00Z",
    }


async def test_two_members_of_a_oneof(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/auth:login", json={"email": "a@b.c", "username": "a", "password": "p"})
    body = problem(response, 400)
    assert violations(body) == {"username": "cannot be set together with email (one of identifier)"}


async def test_the_same_field_in_both_spellings(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/auth:signup", json={"firstName": "a", "first_name": "b"})
    body = problem(response, 400)
    assert violations(body) == {"firstName": "is given twice (as firstName and first_name)"}


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"42", b"null"])
async def test_a_body_that_is_not_an_object(api: httpx.AsyncClient, payload: bytes) -> None:
    response = await api.post("/v1/auth:signup", content=payload, headers={"Content-Type": "application/json"})
    body = problem(response, 400)
    assert body["reason"] == "INVALID_BODY"


async def test_an_empty_body_reads_as_an_empty_object(api: httpx.AsyncClient, fake_auth: FakeAuth) -> None:
    response = await api.post("/v1/auth:logout")
    assert response.status_code == 200, response.text
    assert fake_auth.last("LogOut").request.ByteSize() == 0


async def test_a_body_on_a_route_without_one(api: httpx.AsyncClient) -> None:
    response = await api.request("GET", "/v1/me", json={"x": 1})
    assert problem(response, 400)["reason"] == "INVALID_BODY"

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"x": 1}'

    response = await api.request("GET", "/v1/me", content=chunks())
    assert problem(response, 400)["reason"] == "INVALID_BODY"


async def test_unsupported_content_type(api: httpx.AsyncClient) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"):
        response = await api.post("/v1/auth:signup", content=b"{}", headers={"Content-Type": content_type})
        assert problem(response, 415)["reason"] == "UNSUPPORTED_MEDIA_TYPE"
    response = await api.post(
        "/v1/auth:logout", content=b"{}", headers={"Content-Type": "application/merge-patch+json; charset=UTF-8"}
    )
    assert response.status_code == 200


async def test_oversize_bodies_are_refused(api: httpx.AsyncClient) -> None:
    big = b'{"email": "' + b"x" * (256 * 1024) + b'"}'
    response = await api.post("/v1/auth:signup", content=big, headers={"Content-Type": "application/json"})
    assert problem(response, 413)["reason"] == "BODY_TOO_LARGE"

    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"email": "'
        for _ in range(64):
            yield b"x" * 8192
        yield b'"}'

    response = await api.post("/v1/auth:signup", content=chunked(), headers={"Content-Type": "application/json"})
    assert problem(response, 413)["reason"] == "BODY_TOO_LARGE"

    just_fits = b'{"email": "' + b"x" * (256 * 1024 - 20) + b'"}'
    response = await api.post("/v1/auth:signup", content=just_fits, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text


async def test_bad_query_parameters(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/users:search?query=an&pageSize=ten&limit=3&pageToken=a&pageToken=b")
    body = problem(response, 400)
    assert violations(body) == {
        "pageSize": "must be an integer",
        "limit": "is not a field of SearchUsersRequest",
        "pageToken": "is given more than once",
    }

    response = await api.get("/v1/users:search?pageSize=99999999999")
    assert violations(problem(response, 400)) == {"pageSize": "must be an integer from -2147483648 to 2147483647"}


async def test_query_parameters_cannot_set_bound_fields(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/usernames/ann?username=bob")
    assert violations(problem(response, 400)) == {"username": "is set by the path, not by a query parameter"}

    response = await api.patch("/v1/me?user.firstName=x", json={})
    assert violations(problem(response, 400)) == {"user.firstName": "is set by the body, not by a query parameter"}

    response = await api.post("/v1/auth:signup?email=x", json={})
    assert violations(problem(response, 400)) == {
        "email": "is not a query parameter of this route; send fields in the JSON body"
    }


async def test_non_ascii_forwarded_header(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/me", headers=[(b"Idempotency-Key", "clé".encode())])
    assert problem(response, 400)["reason"] == "INVALID_HEADER"


# Routing errors.


async def test_unknown_paths_are_404_problems(api: httpx.AsyncClient) -> None:
    for path in ("/v1/nothing", "/v1/me/", "/v1/usernames/a/b", "/v1/auth:nope", "/v1/usernames/ann:accept", "/"):
        body = problem(await api.get(path), 404)
        assert body["reason"] == "NOT_FOUND"


async def test_wrong_verbs_are_405_problems_with_allow(api: httpx.AsyncClient) -> None:
    response = await api.put("/v1/me")
    assert problem(response, 405)["reason"] == "METHOD_NOT_ALLOWED"
    assert response.headers["allow"] == "DELETE, GET, PATCH"

    response = await api.get("/v1/auth:signup")
    problem(response, 405)
    assert response.headers["allow"] == "POST"

    response = await api.post("/healthz")
    problem(response, 405)
    assert "GET" in response.headers["allow"]


# The last resort.


async def explode(call: Call, next: Next) -> Reply:
    """A policy (the seam rate limiting and caching plug into) that fails unexpectedly."""
    raise RuntimeError("secret internals: password=hunter2")


async def test_an_unexpected_exception_is_a_generic_500(upstream_target: str, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(upstream=upstream_target), policies=[explode])
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/v1/me", headers={"X-Request-Id": "boom-1"})
        healthy = await http.get("/healthz")

    body = problem(response, 500)
    assert body["reason"] == "INTERNAL"
    assert "hunter2" not in response.text
    assert response.headers["x-request-id"] == "boom-1"
    assert healthy.status_code == 200  # policies concern transcoded routes only
    assert any("unhandled error" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_an_unreachable_upstream_is_503(dead_target: str) -> None:
    app = create_app(Settings(upstream=dead_target, call_timeout_seconds=2.0))
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/v1/me")
    body = problem(response, 503)
    assert body["reason"] == "DEPENDENCY_UNAVAILABLE"
    assert dead_target not in response.text
