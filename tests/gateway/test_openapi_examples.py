"""The example bodies of `/openapi.json` (issue #18) are valid: each fits the schema next to it, and
sent to the real mesh as a signed-up user it is not refused for its fields (400 INVALID_FIELDS,
MALFORMED_JSON, INVALID_BODY). What the example cannot know is fine: an id it made up (404), a
password that is not the caller's (403), a user that is not a connection (400 NOT_CONNECTED), a
username already taken (409)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import jsonschema

from tests.auth.test_auth_http import bearer, sign_up

# Refusals of the request as written, which a valid example never meets.
FIELD_REFUSALS = frozenset({"INVALID_FIELDS", "MALFORMED_JSON", "INVALID_BODY", "INVALID_QUERY"})
# A path variable without a declared example (a share's or invite's token): any text.
MADE_UP = "example-token"


async def test_every_example_body_is_accepted_for_its_fields(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    session = await sign_up(client)
    operations = [
        (verb.upper(), path, operation)
        for path, item in document["paths"].items()
        for verb, operation in item.items()
        if "requestBody" in operation
    ]
    assert len(operations) > 20
    refused: list[str] = []
    for verb, path, operation in operations:
        media = operation["requestBody"]["content"]["application/json"]
        assert "example" in media, f"{verb} {path} has no example body"
        example = media["example"]
        validate(document, media["schema"], example, f"{verb} {path}")
        url = fill_path(path, operation)
        response = await client.request(verb, url, json=example, headers=bearer(session))
        if response.status_code == 400 and response.json().get("reason") in FIELD_REFUSALS:
            refused.append(f"{verb} {url} {example}: {response.json()}")
        assert response.status_code < 500, (verb, url, response.text)
    assert not refused, "\n".join(refused)


def validate(document: dict[str, Any], schema: dict[str, Any], instance: Any, where: str) -> None:
    """`instance` against `schema`, its $refs read in the document."""
    root = {**schema, "components": document["components"]}
    errors = list(jsonschema.Draft202012Validator(root).iter_errors(instance))
    assert not errors, f"{where}: the example does not fit its schema: {[e.message for e in errors]}"


def fill_path(path: str, operation: dict[str, Any]) -> str:
    examples = {p["name"]: p.get("example", MADE_UP) for p in operation.get("parameters", []) if p.get("in") == "path"}
    return re.sub(r"\{([^}]+)\}", lambda m: str(examples[m.group(1)]), path)
