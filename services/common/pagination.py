"""Page sizes and opaque keyset page tokens (SPEC §3: no OFFSET, stable under inserts).

A token is the base64url form of a capsule.common.v1.PageCursor: the list it belongs to and the
sort key of the last row returned. The next page reads rows strictly after that key.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from capsule.common.v1 import common_pb2
from google.protobuf import message as protobuf_message

from services.common.errors import InvalidArgument
from services.common.timestamps import set_timestamp

CursorValue = str | int | datetime

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def page_size(requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """0 means the default; above the maximum is capped (AIP-158); negative is refused."""
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative", violations=[("page_size", "must be 0 (default) or more")]
        )
    if requested == 0:
        return default
    return min(requested, maximum)


def encode_page_token(list_name: str, keys: list[CursorValue]) -> str:
    cursor = common_pb2.PageCursor(list=list_name)
    for value in keys:
        key = cursor.keys.add()
        if isinstance(value, datetime):
            set_timestamp(key.time, value)
        elif isinstance(value, int):
            key.integer = value
        else:
            key.text = value
    return base64.urlsafe_b64encode(cursor.SerializeToString()).rstrip(b"=").decode()


def decode_page_token(token: str, list_name: str, arity: int) -> list[CursorValue] | None:
    """The keys of a token made by encode_page_token for this list, or None for the first page."""
    if not token:
        return None
    cursor = common_pb2.PageCursor()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        cursor.ParseFromString(raw)
    except (binascii.Error, ValueError, protobuf_message.DecodeError):
        raise _malformed() from None
    if cursor.list != list_name or len(cursor.keys) != arity:
        raise _malformed()
    keys: list[CursorValue] = []
    for key in cursor.keys:
        kind = key.WhichOneof("value")
        if kind == "time":
            keys.append(key.time.ToDatetime(tzinfo=UTC))
        elif kind == "integer":
            keys.append(key.integer)
        elif kind == "text":
            keys.append(key.text)
        else:
            raise _malformed()
    return keys


def _malformed() -> InvalidArgument:
    return InvalidArgument(
        "page_token is not a token this list returned",
        reason="MALFORMED_PAGE_TOKEN",
        violations=[("page_token", "use the next_page_token of the previous page of the same list")],
    )
