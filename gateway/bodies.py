"""Reading a request body: size-limited, content type checked, parsed as JSON.

The limit is enforced twice: a declared Content-Length over it is refused before a byte is read,
and a chunked body is counted as it streams in and refused as soon as it passes the limit.
"""

from __future__ import annotations

import json

import orjson
from starlette.types import Receive

from gateway.problems import Problem

JSON_MEDIA_TYPES = frozenset(("application/json",))


def declared_length(content_length: bytes | None, limit: int) -> int | None:
    """The Content-Length of a request (None when absent), refused at once when over `limit`."""
    if content_length is None:
        return None
    try:
        length = int(content_length)
    except ValueError:
        raise Problem.invalid_body("Content-Length is not a number.") from None
    if length > limit:
        raise Problem.body_too_large(limit)
    return length


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # Nobody will read the answer; 499 is what the metrics and logs will show.
            raise Problem(499, "CLIENT_CLOSED_REQUEST", "The client closed the connection.")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise Problem.body_too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_content_type(content_type: bytes | None) -> None:
    """JSON only: application/json or any application/*+json, in UTF-8. An absent Content-Type is
    taken as JSON (plenty of mobile HTTP stacks omit it on small bodies)."""
    if content_type is None:
        return
    text = content_type.decode("latin-1")
    media_type, _, parameters = text.partition(";")
    media_type = media_type.strip().lower()
    if media_type not in JSON_MEDIA_TYPES and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise Problem.unsupported_media_type(text)
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise Problem.unsupported_media_type(text)


def parse_json(body: bytes) -> object:
    """The JSON value of a body (an empty body reads as `{}`: nothing to set)."""
    if not body.strip():
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "surrogate" not in str(exc):
            raise Problem.malformed_json(str(exc)) from None
    # A lone surrogate escape ("\\ud800") is valid JSON but not text, and orjson refuses it. The
    # standard parser keeps it, so that the field holding it is named (SPEC §3 "Strings"): rare,
    # hence the slow parser only here.
    try:
        return json.loads(body, object_pairs_hook=_pairs_without_surrogates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise Problem.malformed_json(str(exc)) from None


def _pairs_without_surrogates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # A key is no field value to name: one with a lone surrogate is malformed JSON (as orjson said).
    for key, _ in pairs:
        if any("\ud800" <= c <= "\udfff" for c in key):
            raise ValueError("an object key holds a lone surrogate")
    return dict(pairs)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: orjson refuses them too
