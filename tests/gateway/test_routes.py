"""Every auth route of SPEC §8 reaches the right RPC with the right fields and metadata."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httpx
from capsule.auth.v1 import auth_pb2

if TYPE_CHECKING:
    from tests.gateway.conftest import FakeAuth


async def test_sign_up_maps_the_whole_body_and_answers_the_session_in_camel_case(
    api: httpx.AsyncClient, fake_auth: FakeAuth
) -> None:
    body = {
        "email": "ann@example.com",
        "username": "ann",
        "password": "correct horse battery",
        "firstName": "Ann",
        "last_name": "Lee",  # the original proto name is accepted too
    }
    response = await api.post("/v1/auth:signup", json=body)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    request = fake_auth.last("SignUp").request
    assert request == auth_pb2.SignUpRequest(
        email="ann@example.com", username="ann", password="correct horse battery", first_name="Ann", last_name="Lee"
    )
    session = response.json()
    assert session["accessToken"] == "access"
    assert session["refreshToken"] == "refresh"
    assert session["expiresIn"] == 900
    assert session["user"]["firstName"] == "Ann"
    assert session["user"]["createdAt"] == "2030-03-17T17:46:40Z"
    assert session["user"]["avatarUrl"] == ""  # unpopulated scalars are printed


async def test_log_in_refresh_and_log_out(api: httpx.AsyncClient, fake_auth: FakeAuth) -> None:
    response = await api.post("/v1/auth:login", json={"username": "ann", "password": "pw"})
    assert response.status_code == 200, response.text
    assert fake_auth.last("LogIn").request == auth_pb2.LogInRequest(username="ann", password="pw")
    assert response.json()["user"]["username"] == "ann"

    response = await api.post("/v1/auth:refresh", json={"refreshToken": "r1"})
    assert response.status_code == 200, response.text
    assert fake_auth.last("Refresh").request == auth_pb2.RefreshRequest(refresh_token="r1")
    assert response.json()["accessToken"] == "access-2"

    response = await api.post("/v1/auth:logout", json={"refreshToken": "r2"})
    assert response.status_code == 200, response.text
    assert fake_auth.last("LogOut").request == auth_pb2.LogOutRequest(refresh_token="r2")
    assert response.json() == {}


async def test_get_me(api: httpx.AsyncClient, fake_auth: FakeAuth) -> None:
    response = await api.get("/v1/me", headers={"Authorization": "Bearer tok"})
    assert response.status_code == 200, response.text
    assert fake_auth.last("GetMe").request == auth_pb2.GetMeRequest()
    assert response.json() == {
        "id": "me",
        "email": "me@example.com",
        "username": "me",
        "firstName": "",
        "lastName": "",
        "avatarUrl": "",
        "country": "",
    }


async def test_patch_me_fills_the_update_mask_from_the_body_keys(api: httpx.AsyncClient, fake_auth: FakeAuth) -> None:
    response = await api.patch("/v1/me", json={"firstName": "Ann", "avatar_url": "https://a.example/x.png"})

    assert response.status_code == 200, response.text
    request = fake_auth.last("UpdateMe").request
    assert isinstance(request, auth_pb2.UpdateMeRequest)
    assert request.user.first_name == "Ann"
    assert request.user.avatar_url == "https://a.example/x.png"
    assert list(request.update_mask.paths) == ["first_name", "avatar_url"]
    assert response.json()["firstName"] == "Ann"


async def test_patch_me_keeps_an_update_mask_given_as_a_query_parameter(
    api: httpx.AsyncClient, fake_auth: FakeAuth
) -> None:
    response = await api.patch("/v1/me?updateMask=lastName,country", json={"firstName": "Ann", "lastName": "Lee"})

    assert response.status_code == 200, response.text
    request = fake_auth.last("UpdateMe").request
    assert isinstance(request, auth_pb2.UpdateMeRequest)
    assert list(request.update_mask.paths) == ["last_name", "country"]


async def test_check_username_binds_the_path_and_prints_false(api: httpx.AsyncClient, fake_auth: FakeAuth) -> None:
    response = await api.get("/v1/usernames/taken")
    assert response.status_code == 200, response.text
    assert fake_auth.last("CheckUsername").request == auth_pb2.CheckUsernameRequest(username="taken")
    assert response.json() == {"username": "taken", "available": False}

    # Percent-encoded segments are decoded; an encoded ':' stays in the value.
    response = await api.get("/v1/usernames/a%3Ab%20c")
    assert response.status_code == 200, response.text
    assert fake_auth.last("CheckUsername").request == auth_pb2.CheckUsernameRequest(username="a:b c")


async def test_search_users_binds_query_parameters_in_both_spellings(
    api: httpx.AsyncClient, fake_auth: FakeAuth
) -> None:
    response = await api.get("/v1/users:search", params={"query": "an", "pageSize": "5", "page_token": "t"})

    assert response.status_code == 200, response.text
    assert fake_auth.last("SearchUsers").request == auth_pb2.SearchUsersRequest(query="an", page_size=5, page_token="t")
    assert response.json() == {
        "users": [
            {"id": "u0", "username": "an0", "firstName": "", "lastName": "", "avatarUrl": ""},
            {"id": "u1", "username": "an1", "firstName": "", "lastName": "", "avatarUrl": ""},
        ],
        "nextPageToken": "next",
    }


async def test_headers_are_forwarded_as_metadata(api: httpx.AsyncClient, fake_auth: FakeAuth) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = await api.post(
        "/v1/auth:signup",
        json={"email": "m@example.com"},
        headers={
            "Authorization": "Bearer abc.def",
            "Idempotency-Key": "key-1",
            "X-Request-Id": "req-123",
            "traceparent": traceparent,
            "tracestate": "vendor=1",
            "Cookie": "not=forwarded",
        },
    )

    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-123"
    metadata = fake_auth.last("SignUp").metadata
    assert metadata["authorization"] == "Bearer abc.def"
    assert metadata["idempotency-key"] == "key-1"
    assert metadata["x-request-id"] == "req-123"
    assert metadata["traceparent"] == traceparent
    assert metadata["tracestate"] == "vendor=1"
    assert metadata["x-forwarded-for"] == "127.0.0.1"
    assert "cookie" not in metadata


async def test_a_request_id_is_made_when_absent_or_insane(api: httpx.AsyncClient, fake_auth: FakeAuth) -> None:
    for headers in ({}, {"X-Request-Id": "has spaces and {braces}"}):
        response = await api.get("/v1/me", headers=headers)
        request_id = response.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)
        assert fake_auth.last("GetMe").metadata["x-request-id"] == request_id


async def test_error_responses_carry_the_request_id_too(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/nowhere", headers={"X-Request-Id": "abc"})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "abc"
