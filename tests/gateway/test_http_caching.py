"""ETag / If-None-Match / Cache-Control / Vary through the session mesh's gateway (`python -m
gateway`, which serves with gateway.policies): profiles, search, username checks, capsule lists
and themes; the rules themselves are also unit-tested on a bare app below."""

from __future__ import annotations

import uuid

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.routing import Route

from gateway.httpcache import HttpCacheMiddleware
from tests.auth.test_auth_http import bearer, sign_up
from tests.capsules.helpers import pair, send


def assert_cacheable(response: httpx.Response, cache_control: str) -> str:
    assert response.status_code == 200, response.text
    etag = response.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert response.headers["cache-control"] == cache_control
    assert response.headers["vary"] == "Authorization"
    return etag


async def assert_not_modified(
    client: httpx.AsyncClient, path: str, etag: str, headers: dict[str, str] | None = None, condition: str = ""
) -> None:
    response = await client.get(path, headers={**(headers or {}), "If-None-Match": condition or etag})
    assert response.status_code == 304, response.text
    assert response.content == b""
    assert response.headers["etag"] == etag and response.headers["vary"] == "Authorization"
    assert "cache-control" in response.headers and "content-type" not in response.headers


async def test_profile_etag_304_and_a_change_of_data_changes_it(client: httpx.AsyncClient) -> None:
    session = await sign_up(client, firstName="Ada")
    auth = bearer(session)
    etag = assert_cacheable(await client.get("/v1/me", headers=auth), "private, max-age=0")
    await assert_not_modified(client, "/v1/me", etag, auth)
    await assert_not_modified(client, "/v1/me", etag, auth, condition=f'"nope", W/{etag}')
    await assert_not_modified(client, "/v1/me", etag, auth, condition="*")
    assert (await client.get("/v1/me", headers={**auth, "If-None-Match": '"nope"'})).status_code == 200

    patched = await client.patch("/v1/me", json={"firstName": "Augusta"}, headers=auth)
    assert patched.status_code == 200 and patched.headers["cache-control"] == "no-store"
    assert "etag" not in patched.headers
    changed = await client.get("/v1/me", headers={**auth, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["firstName"] == "Augusta"
    assert assert_cacheable(changed, "private, max-age=0") != etag


async def test_search_and_username_check_answer_304_until_the_data_changes(client: httpx.AsyncClient) -> None:
    me = bearer(await sign_up(client))
    prefix = "ca" + uuid.uuid4().hex[:8]
    await sign_up(client, username=prefix + "one")
    path = f"/v1/users:search?query={prefix}"
    etag = assert_cacheable(await client.get(path, headers=me), "private, max-age=30")
    await assert_not_modified(client, path, etag, me)

    free = f"/v1/usernames/{prefix}two"
    etag = assert_cacheable(await client.get(free), "private, max-age=0")
    await assert_not_modified(client, free, etag)
    await sign_up(client, username=prefix + "two")  # the name is taken now
    taken = await client.get(free, headers={"If-None-Match": etag})
    assert assert_cacheable(taken, "private, max-age=0") != etag


async def test_errors_are_not_stored_and_carry_no_etag(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/me")
    assert response.status_code == 401
    assert response.headers["cache-control"] == "no-store" and "etag" not in response.headers
    assert response.headers["vary"] == "Authorization"


async def test_themes_are_public_for_an_hour() -> None:
    async def body(request: object) -> Response:
        return Response(b'{"themes":[]}', media_type="application/json")

    app = Starlette(
        routes=[Route("/v1/themes", body), Route("/v1/other", body)],
        middleware=[Middleware(HttpCacheMiddleware)],
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        themes = await http.get("/v1/themes")
        etag = assert_cacheable(themes, "public, max-age=3600")
        assert (await http.get("/v1/themes", headers={"If-None-Match": etag})).status_code == 304
        assert_cacheable(await http.get("/v1/other"), "private, max-age=0")


async def test_capsule_list_and_themes_through_the_mesh(client: httpx.AsyncClient) -> None:
    """A capsule list revalidates by ETag until a new capsule changes it; themes are public."""
    a, _, recipient = await pair(client)
    assert (await send(client, a, recipient, title="first")).status_code == 200
    outbox = {"box": "outbox"}
    listed = await client.get("/v1/capsules", params=outbox, headers=bearer(a))
    etag = assert_cacheable(listed, "private, max-age=0")
    await assert_not_modified(client, "/v1/capsules?box=outbox", etag, bearer(a))

    assert (await send(client, a, recipient, title="second")).status_code == 200
    changed = await client.get("/v1/capsules", params=outbox, headers={**bearer(a), "If-None-Match": etag})
    assert changed.status_code == 200 and len(changed.json()["capsules"]) == 2
    assert assert_cacheable(changed, "private, max-age=0") != etag

    themes = await client.get("/v1/themes")
    themes_etag = assert_cacheable(themes, "public, max-age=3600")
    await assert_not_modified(client, "/v1/themes", themes_etag)
