"""Page sizes and opaque keyset page tokens (SPEC §3: no OFFSET, stable under inserts).

A token is the base64url form of a capsule.common.v1.PageCursor: the list it belongs to and the
sort key of the last row returned. The next page reads rows strictly after that key.

A list reads `size + 1` rows after `page_after(token, name, *kinds)` and answers
`Page(*take_page(rows, size, name, key))`: the extra row only says that a next page exists.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar, overload

from capsule.common.v1 import common_pb2
from google.protobuf import message as protobuf_message

from services.common.errors import InvalidArgument
from services.common.ids import parse_uuid
from services.common.timestamps import set_timestamp, to_datetime

# A sort key's parts as they travel in a token; a uuid.UUID travels as its text.
CursorValue = str | int | datetime
KeyPart = CursorValue | uuid.UUID

T = TypeVar("T")
A = TypeVar("A", str, int, datetime, uuid.UUID)
B = TypeVar("B", str, int, datetime, uuid.UUID)

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


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    rows: list[T]
    next_page_token: str  # empty on the last page


def encode_page_token(list_name: str, keys: Sequence[KeyPart]) -> str:
    cursor = common_pb2.PageCursor(list=list_name)
    for value in keys:
        key = cursor.keys.add()
        if isinstance(value, datetime):
            set_timestamp(key.time, value)
        elif isinstance(value, int):
            key.integer = value
        else:
            key.text = str(value)
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
            keys.append(to_datetime(key.time))
        elif kind == "integer":
            keys.append(key.integer)
        elif kind == "text":
            keys.append(key.text)
        else:
            raise _malformed()
    return keys


@overload
def page_after(token: str, list_name: str, first: type[A], /) -> tuple[A] | None: ...
@overload
def page_after(token: str, list_name: str, first: type[A], second: type[B], /) -> tuple[A, B] | None: ...
def page_after(token: str, list_name: str, *kinds: type) -> tuple[Any, ...] | None:
    """The sort key a page starts after, one part per kind the list sorts by (str, int, datetime or
    uuid.UUID), or None for the first page. A token of another list, or whose parts are not of
    these kinds, is refused as MALFORMED_PAGE_TOKEN."""
    keys = decode_page_token(token, list_name, len(kinds))
    if keys is None:
        return None
    parts: list[Any] = []
    for kind, value in zip(kinds, keys, strict=True):
        if kind is uuid.UUID:
            parsed = parse_uuid(value) if isinstance(value, str) else None
            if parsed is None:
                raise _malformed()
            parts.append(parsed)
        elif isinstance(value, kind):
            parts.append(value)
        else:
            raise _malformed()
    return tuple(parts)


def take_page(
    rows: Sequence[T], size: int, list_name: str, key: Callable[[T], Sequence[KeyPart]]
) -> tuple[list[T], str]:
    """The first `size` of `rows` (read with a limit of size + 1) and the token of the page after
    them, made from the last row's sort key; the token is empty when no row was left over."""
    if len(rows) <= size:
        return list(rows), ""
    page = list(rows[:size])
    return page, encode_page_token(list_name, key(page[-1]))


def _malformed() -> InvalidArgument:
    return InvalidArgument(
        "page_token is not a token this list returned",
        reason="MALFORMED_PAGE_TOKEN",
        violations=[("page_token", "use the next_page_token of the previous page of the same list")],
    )
