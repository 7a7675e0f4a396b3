"""ETag / If-None-Match / Cache-Control / Vary through the session mesh's gateway (`python -m
gateway`, which serves with gateway.policies): profiles, search, username checks, capsule lists
and themes; the rules themselves are also unit-tested on a bare app below."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import cast

import httpx

from gateway.calls import Call, Reply
from gateway.httpcache import HttpCache
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


def bare_call(path: str, if_none_match: bytes | None = None) -> Call:
    """What the policy reads of a call: verb, path, route template, If-None-Match."""
    route = SimpleNamespace(binding=SimpleNamespace(template=path))
    values = [if_none_match] if if_none_match else []
    return cast(
        Call,
        SimpleNamespace(method="GET", path=path, match=SimpleNamespace(route=route), header_values=lambda name: values),
    )


async def test_themes_are_public_for_an_hour() -> None:
    async def body(call: Call) -> Reply:
        return Reply(200, [(b"content-type", b"application/json")], b'{"themes":[]}')

    policy = HttpCache()
    themes = await policy(bare_call("/v1/themes"), body)
    headers = dict(themes.headers)
    assert headers[b"cache-control"] == b"public, max-age=3600" and headers[b"vary"] == b"Authorization"
    again = await policy(bare_call("/v1/themes", headers[b"etag"]), body)
    assert again.status == 304 and again.body == b"" and b"content-type" not in dict(again.headers)
    other = await policy(bare_call("/v1/other"), body)
    assert dict(other.headers)[b"cache-control"] == b"private, max-age=0"


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
