"""The request walk every service runs before its handlers (the declared field rules and hostile
input), the parsing of the ids it judged, and requests protobuf cannot parse."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from services.common import field_rules
from services.common.errors import InvalidArgument
from services.common.ids import parse_uuid


def resource_id(value: str, field: str = "id") -> uuid.UUID:
    """The UUID in a request field that declares FORMAT_UUID (and REQUIRED): the walk has judged it
    before the handler, so this parses; a caller that bypassed the walk (domain code called
    directly) still gets INVALID_ARGUMENT naming the field, never a 500."""
    parsed = parse_uuid(value.strip())
    if parsed is None:
        raise InvalidArgument(f"{field} must be a UUID", violations=[(field, "must be a UUID")])
    return parsed


def optional_id(value: str, field: str) -> uuid.UUID | None:
    """resource_id of an optional UUID field: None when it is empty."""
    return resource_id(value, field) if value else None


# The request walk, run on every request before any handler (services.common.server): the rules the
# protos declare (services/common/field_rules.py: normalizing strings in place, lengths, formats,
# ranges, required fields) and the hostile input SPEC §3 names for every field: Postgres cannot
# store NUL (it would fail the statement, a 500), a lone surrogate is not text, and proto3 enums are
# open, so a gRPC caller can send any number.

# A protobuf string never holds a lone surrogate (the parser and the setters refuse what is not
# UTF-8: see Undecodable below), so NUL is all the walk has to look for.
_NUL = "\x00"
NUL_OR_SURROGATE = "must not contain a NUL character or a lone surrogate"
_STRING, _ENUM, _MESSAGE, _INTEGER = 0, 1, 2, 3


class _Plan:
    """What to check in one message type: by field number, the kind of check and its data, and the
    required fields to look for when they are not set."""

    __slots__ = ("exactly_one", "fields", "numbers", "oneofs", "required")

    def __init__(self) -> None:
        # number → (name, kind, repeated, data, text): data is a StringRule (or None), the enum's
        # numbers, an IntegerRule, a sub-plan or ("map", plan); text the enum's choices or, for a
        # repeated field, its item limit.
        self.fields: dict[int, tuple[str, int, bool, Any, Any]] = {}
        self.required: tuple[tuple[int, str], ...] = ()  # (number, name)
        self.oneofs: tuple[tuple[str, ...], ...] = ()  # the field names of each required oneof
        self.exactly_one: tuple[tuple[str, ...], ...] = ()  # groups of which exactly one is set
        self.numbers: dict[str, int] = {}  # field name → number: violations in the message's order


_PLANS: dict[tuple[str, bool], _Plan | None] = {}


def request_checker(
    descriptor: Descriptor, *, declared: bool = True
) -> Callable[[Message], list[tuple[str, str]]] | None:
    """The check of one request type, prepared once (None when the type holds nothing to check at
    any depth). It normalizes the request's strings in place and returns the violations, named by
    proto field path. `declared=False`: the hostile-input checks alone (bench/validation.py)."""
    plan = _plan(descriptor, declared)
    if plan is None:
        return None

    def check(message: Message) -> list[tuple[str, str]]:
        violations: list[tuple[str, str]] = []
        _walk(message, plan, "", violations)
        return violations

    return check


def _plan(descriptor: Descriptor, declared: bool) -> _Plan | None:
    key = (descriptor.full_name, declared)
    if key in _PLANS:
        return _PLANS[key]
    plan = _PLANS[key] = _Plan()  # placed before the fields: recursive types (Struct) end here
    required: list[tuple[int, str]] = []
    for field in descriptor.fields:
        repeated = field.is_repeated
        if field.name == "page_token":
            # Opaque and signed (services/common/pagination.py): anything we did not issue, NUL
            # included, is MALFORMED_PAGE_TOKEN there (SPEC §3), before any SQL.
            continue
        must_be_set = declared and field_rules.is_required(field) and not repeated
        limit = field_rules.max_items(field) if declared else 0
        if field.type == FieldDescriptor.TYPE_STRING:
            rule = field_rules.string_rule(field) if declared else None
            plan.fields[field.number] = (field.name, _STRING, repeated, rule, limit)
            if must_be_set:
                required.append((field.number, field.name))
        elif field.type == FieldDescriptor.TYPE_ENUM:
            enum = field.enum_type
            choices = ", ".join(v.name for v in enum.values)
            plan.fields[field.number] = (field.name, _ENUM, repeated, frozenset(enum.values_by_number), choices)
            if must_be_set:
                required.append((field.number, field.name))
        elif field.message_type is not None:
            entry = field.message_type
            if must_be_set:
                required.append((field.number, field.name))
            if entry.GetOptions().map_entry:
                # A map's keys and values are checked; a violation names the map field.
                entry_plan = _plan(entry, declared)
                if entry_plan is not None:
                    plan.fields[field.number] = (field.name, _MESSAGE, True, ("map", entry_plan), 0)
            else:
                sub = _plan(entry, declared)
                if sub is not None:
                    plan.fields[field.number] = (field.name, _MESSAGE, repeated, sub, limit)
        elif declared and (integer := field_rules.integer_rule(field)) is not None:
            plan.fields[field.number] = (field.name, _INTEGER, repeated, integer, limit)
    plan.required = tuple(required)
    plan.numbers = {field.name: field.number for field in descriptor.fields}
    plan.oneofs = tuple(field_rules.required_oneofs(descriptor)) if declared else ()
    plan.exactly_one = tuple(field_rules.exactly_one_groups(descriptor)) if declared else ()
    if not plan.fields and not plan.required and not plan.oneofs and not plan.exactly_one:
        _PLANS[key] = None
        return None
    return plan


def _walk(message: Message, plan: _Plan, prefix: str, violations: list[tuple[str, str]]) -> None:
    # ListFields yields only what is set, so an empty request costs one call; paths are built
    # only for what is reported or descended into.
    fields = plan.fields
    first = len(violations)
    present = message.ListFields()
    for field, value in present:
        entry = fields.get(field.number)
        if entry is None:
            continue
        name, kind, repeated, data, extra = entry
        if repeated and kind != _ENUM and extra and len(value) > extra:
            violations.append((prefix + name, f"must have at most {extra} items"))
            continue
        if kind == _STRING:
            if repeated:
                for index, item in enumerate(value):
                    if _NUL in item:
                        violations.append((f"{prefix}{name}[{index}]", NUL_OR_SURROGATE))
                    elif data is not None:
                        normalized, wrong = data.check(item)
                        if wrong is not None:
                            violations.append((f"{prefix}{name}[{index}]", wrong))
                        elif normalized != item:
                            value[index] = normalized
            elif _NUL in value:
                violations.append((prefix + name, NUL_OR_SURROGATE))
            elif data is not None:
                normalized, wrong = data.check(value)
                if wrong is not None:
                    violations.append((prefix + name, wrong))
                elif normalized != value:
                    setattr(message, name, normalized)
        elif kind == _ENUM:
            if repeated:
                for index, item in enumerate(value):
                    if item not in data:
                        violations.append((f"{prefix}{name}[{index}]", f"must be one of {extra}"))
            elif value not in data:
                violations.append((prefix + name, f"must be one of {extra}"))
        elif kind == _INTEGER:
            items = enumerate(value) if repeated else ((-1, value),)
            for index, item in items:
                if (wrong := data.check(item)) is not None:
                    violations.append((prefix + name + ("" if index < 0 else f"[{index}]"), wrong))
        elif isinstance(data, tuple):  # a map: its key and value, named by the map field
            _walk_map(value, data[1], prefix + name, violations)
        elif repeated:
            for index, item in enumerate(value):
                _walk(item, data, f"{prefix}{name}[{index}].", violations)
        else:
            _walk(value, data, f"{prefix}{name}.", violations)
    if plan.required or plan.oneofs or plan.exactly_one:
        start = len(violations)
        _absent(plan, present, prefix, violations)
        if len(violations) > start:
            # Unset fields are found last: this message's violations go back in field order.
            numbers, skip = plan.numbers, len(prefix)
            violations[first:] = sorted(
                violations[first:], key=lambda v: numbers.get(re.split(r"[.\[]", v[0][skip:], maxsplit=1)[0], 0)
            )


def _absent(plan: _Plan, present: Any, prefix: str, violations: list[tuple[str, str]]) -> None:
    """Required fields that are not set: proto3 does not send a string or enum at its zero value
    (a set string that is blank was judged by its rule)."""
    numbers = {field.number for field, _ in present}
    for number, name in plan.required:
        if number not in numbers:
            violations.append((prefix + name, "is required"))
    for group in plan.exactly_one:
        given = [field.name for field, value in present if field.name in group and _given(value)]
        if len(given) != 1:
            text = "exactly one of " + " and ".join(group)
            violations.extend((prefix + name, text) for name in group)
    for names in plan.oneofs:
        # Set and not blank (a oneof's string is present even when empty).
        if not any(_given(value) for field, value in present if field.name in names):
            violations.append((prefix + names[0], "is required: give one of " + ", ".join(names)))


def _given(value: Any) -> bool:
    """Set and not empty: a blank string or an empty list is not given."""
    return not isinstance(value, str) or bool(value.strip())


def _walk_map(container: Any, plan: _Plan, path: str, violations: list[tuple[str, str]]) -> None:
    key_kind = plan.fields.get(1)
    value_entry = plan.fields.get(2)
    for key in container:
        if key_kind is not None and isinstance(key, str) and _NUL in key:
            violations.append((path, "must not have a key with a NUL character or a lone surrogate"))
            continue
        if value_entry is None:
            continue
        _, kind, _, data, choices = value_entry
        value = container[key]
        if kind == _STRING and _NUL in value:
            violations.append((path, NUL_OR_SURROGATE))
        elif kind == _ENUM and value not in data:
            violations.append((path, f"must be one of {choices}"))
        elif kind == _MESSAGE:
            _walk(value, data, path + ".", violations)


# Requests protobuf cannot parse. grpc answers a deserializer's exception with UNKNOWN and the
# exception's class in the message; over gRPC the usual cause is a string that is not UTF-8 (how a
# lone surrogate arrives: its 3-byte encoding), which SPEC §3 wants as INVALID_ARGUMENT naming it.


class Undecodable:
    """What the request deserializer hands the handler wrapper instead of raising."""

    __slots__ = ("data", "descriptor")

    def __init__(self, descriptor: Descriptor, data: bytes) -> None:
        self.descriptor = descriptor
        self.data = data

    def error(self) -> InvalidArgument:
        violations = undecodable_fields(self.descriptor, self.data)
        if not violations:
            return InvalidArgument(f"the request is not a valid {self.descriptor.full_name} message")
        fields = ", ".join(dict.fromkeys(f for f, _ in violations))
        return InvalidArgument(f"the request has invalid fields: {fields}", violations=violations)


def lenient_parser(message_class: Any) -> Callable[[bytes], Any]:
    parse = message_class.FromString
    descriptor = message_class.DESCRIPTOR

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return Undecodable(descriptor, data)

    return deserialize


NOT_UTF8 = "is not valid UTF-8 (a lone surrogate or a broken sequence)"


class _Malformed(Exception):
    pass


def undecodable_fields(descriptor: Descriptor, data: bytes) -> list[tuple[str, str]]:
    """The string fields of an unparsable message whose bytes are not UTF-8, found by reading its
    wire format; empty when the message is broken in another way (truncated, bad tags)."""
    violations: list[tuple[str, str]] = []
    with contextlib.suppress(_Malformed, IndexError):  # what was found before the break still counts
        _scan(descriptor, data, "", violations, 0)
    return violations


def _scan(descriptor: Descriptor, data: bytes, prefix: str, violations: list[tuple[str, str]], depth: int) -> None:
    position, end = 0, len(data)
    seen: dict[int, int] = {}
    while position < end:
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        elif wire_type == 2:
            length, position = _varint(data, position)
            chunk = data[position : position + length]
            position += length
            if position > end:
                raise _Malformed
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            index = seen[number] = seen.get(number, -1) + 1
            path = prefix + field.name + (f"[{index}]" if field.is_repeated else "")
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    chunk.decode("utf-8")  # strict: refuses encoded surrogates, as protobuf does
                except UnicodeDecodeError:
                    violations.append((path, NOT_UTF8))
            elif field.message_type is not None and depth < 32:
                _scan(field.message_type, chunk, path + ".", violations, depth + 1)
        else:
            raise _Malformed  # groups (not in proto3) or garbage
        if position > end:
            raise _Malformed


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise _Malformed
