"""Page sizes and opaque, signed keyset page tokens (SPEC §3: no OFFSET, stable under inserts;
page tokens are integrity-protected).

A token is `<kid>.<payload>.<tag>`: the payload is the base64url form of a
capsule.common.v1.PageCursor (the list it belongs to and the sort key of the last row returned),
the tag a truncated HMAC-SHA256 by the key `kid` over the list, the caller's user id and the
payload. The next page reads rows strictly after that key. A token edited by hand, made for
another list or for another caller is MALFORMED_PAGE_TOKEN, whatever it decodes to.

Keys rotate: the first key of PAGE_TOKEN_KEYS signs, every key listed verifies, so tokens handed
out before a rotation keep working while the previous key is still listed. Each service installs
its keys once at start-up (`use_page_token_keys`).

A list reads `size + 1` rows after `page_after(token, name, *kinds, caller=...)` and answers
`Page(*take_page(rows, size, name, key, caller=...))`: the extra row only says that a next page
exists. `caller` is the user the list is read for (None for a public list, such as themes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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

# 128 bits of HMAC-SHA256: forging one is as hard as guessing a random 128-bit value.
TAG_BYTES = 16
KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
MIN_SECRET_BYTES = 16
_DOMAIN = b"capsule-mesh page token v1"

# What a signed token may still carry without reaching SQL as an error: Postgres `integer` (the
# only integer sort key, search's tier), datetime's own range (Postgres' is wider), bounded text
# without NUL (Postgres text cannot hold it).
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_SECONDS_MIN = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
_SECONDS_MAX = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())
_TEXT_MAX = 1000


@dataclass(frozen=True)
class PageTokenKeys:
    """The keys tokens are signed and verified with: (kid, secret) pairs, the first one signs."""

    keys: tuple[tuple[str, bytes], ...] = field(repr=False)  # secrets never reach a log line

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("at least one page-token key is needed")
        kids = [kid for kid, _ in self.keys]
        if len(set(kids)) != len(kids):
            raise ValueError("page-token key ids must differ")
        for kid, secret in self.keys:
            if not KID_PATTERN.fullmatch(kid):
                raise ValueError(f"page-token key id {kid!r} must be 1-32 of A-Z a-z 0-9 _ -")
            if len(secret) < MIN_SECRET_BYTES:
                raise ValueError(f"page-token key {kid!r} must be at least {MIN_SECRET_BYTES} bytes")

    @classmethod
    def parse(cls, raw: str) -> PageTokenKeys:
        """`kid1:secret1,kid2:secret2` (the PAGE_TOKEN_KEYS form); raises ValueError."""
        pairs: list[tuple[str, bytes]] = []
        for part in raw.split(","):
            if not part.strip():
                continue
            kid, sep, secret = part.strip().partition(":")
            if not sep:
                raise ValueError("each page-token key is kid:secret")
            pairs.append((kid, secret.encode()))
        return cls(tuple(pairs))

    def secret(self, kid: str) -> bytes | None:
        return next((secret for k, secret in self.keys if k == kid), None)


_installed: PageTokenKeys | None = None


def use_page_token_keys(keys: PageTokenKeys) -> None:
    """Install this process's keys (each service does once, at start-up)."""
    global _installed
    _installed = keys


def _keys(keys: PageTokenKeys | None) -> PageTokenKeys:
    chosen = keys or _installed
    if chosen is None:
        raise RuntimeError("no page-token keys installed: call use_page_token_keys at start-up")
    return chosen


def _tag(secret: bytes, kid: str, list_name: str, caller: uuid.UUID | None, payload: bytes) -> bytes:
    # Every part is length-prefixed, so no two (list, caller, payload) share a MAC input.
    mac = hmac.new(secret, _DOMAIN, hashlib.sha256)
    for part in (kid.encode(), list_name.encode(), (str(caller) if caller else "").encode(), payload):
        mac.update(len(part).to_bytes(4, "big"))
        mac.update(part)
    return mac.digest()[:TAG_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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


def encode_page_token(
    list_name: str,
    keys: Sequence[KeyPart],
    *,
    caller: uuid.UUID | None,
    signing: PageTokenKeys | None = None,
) -> str:
    """A token for the page after `keys` of this list, read by `caller`, signed by the first key."""
    cursor = common_pb2.PageCursor(list=list_name)
    for value in keys:
        key = cursor.keys.add()
        if isinstance(value, datetime):
            set_timestamp(key.time, value)
        elif isinstance(value, int):
            key.integer = value
        else:
            key.text = str(value)
    return sign_cursor(cursor, caller=caller, signing=signing)


def sign_cursor(
    cursor: common_pb2.PageCursor, *, caller: uuid.UUID | None, signing: PageTokenKeys | None = None
) -> str:
    """The token of a cursor as it stands, signed by the first key for its list and `caller`."""
    payload = cursor.SerializeToString()
    kid, secret = _keys(signing).keys[0]
    return f"{kid}.{_b64(payload)}.{_b64(_tag(secret, kid, cursor.list, caller, payload))}"


def decode_page_token(
    token: str,
    list_name: str,
    arity: int,
    *,
    caller: uuid.UUID | None,
    verifying: PageTokenKeys | None = None,
) -> list[CursorValue] | None:
    """The keys of a token made by encode_page_token for this list and caller, signed by one of
    the keys, or None for the first page."""
    if not token:
        return None
    kid, _, rest = token.partition(".")
    payload_text, _, tag_text = rest.partition(".")
    secret = _keys(verifying).secret(kid)
    if secret is None or not payload_text or not tag_text:
        raise _malformed()
    try:
        payload, tag = _unb64(payload_text), _unb64(tag_text)
    except (binascii.Error, ValueError):
        raise _malformed() from None
    # One spelling per token: base64's spare bits and padding would let edits through unnoticed.
    if _b64(payload) != payload_text or _b64(tag) != tag_text:
        raise _malformed()
    if not hmac.compare_digest(tag, _tag(secret, kid, list_name, caller, payload)):
        raise _malformed()
    cursor = common_pb2.PageCursor()
    try:
        cursor.ParseFromString(payload)
    except protobuf_message.DecodeError:
        raise _malformed() from None
    if cursor.list != list_name or len(cursor.keys) != arity:
        raise _malformed()
    # Signed by us, but still checked: a key rotation or a bug must not turn into a 500.
    keys: list[CursorValue] = []
    for key in cursor.keys:
        kind = key.WhichOneof("value")
        if kind == "time":
            if not (_SECONDS_MIN <= key.time.seconds <= _SECONDS_MAX and 0 <= key.time.nanos < 1_000_000_000):
                raise _malformed()
            keys.append(to_datetime(key.time))
        elif kind == "integer":
            if not _INT_MIN <= key.integer <= _INT_MAX:
                raise _malformed()
            keys.append(key.integer)
        elif kind == "text":
            if "\x00" in key.text or len(key.text) > _TEXT_MAX:
                raise _malformed()
            keys.append(key.text)
        else:
            raise _malformed()
    return keys


@overload
def page_after(
    token: str, list_name: str, first: type[A], /, *, caller: uuid.UUID | None, keys: PageTokenKeys | None = None
) -> tuple[A] | None: ...
@overload
def page_after(
    token: str,
    list_name: str,
    first: type[A],
    second: type[B],
    /,
    *,
    caller: uuid.UUID | None,
    keys: PageTokenKeys | None = None,
) -> tuple[A, B] | None: ...
def page_after(
    token: str, list_name: str, *kinds: type, caller: uuid.UUID | None, keys: PageTokenKeys | None = None
) -> tuple[Any, ...] | None:
    """The sort key a page starts after, one part per kind the list sorts by (str, int, datetime or
    uuid.UUID), or None for the first page. A token not signed by us for this list and this caller
    (None: a public list), or whose parts are not of these kinds, is refused as
    MALFORMED_PAGE_TOKEN."""
    decoded = decode_page_token(token, list_name, len(kinds), caller=caller, verifying=keys)
    if decoded is None:
        return None
    parts: list[Any] = []
    for kind, value in zip(kinds, decoded, strict=True):
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
    rows: Sequence[T],
    size: int,
    list_name: str,
    key: Callable[[T], Sequence[KeyPart]],
    *,
    caller: uuid.UUID | None,
    keys: PageTokenKeys | None = None,
) -> tuple[list[T], str]:
    """The first `size` of `rows` (read with a limit of size + 1) and the token of the page after
    them for `caller`, made from the last row's sort key; the token is empty when no row was left
    over."""
    if len(rows) <= size:
        return list(rows), ""
    page = list(rows[:size])
    return page, encode_page_token(list_name, key(page[-1]), caller=caller, signing=keys)


def _malformed() -> InvalidArgument:
    return InvalidArgument(
        "page_token is not a token this list returned",
        reason="MALFORMED_PAGE_TOKEN",
        violations=[("page_token", "use the next_page_token of the previous page of the same list")],
    )
