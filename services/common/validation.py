"""Field rules every service shares. Each adds its violations (proto field paths) to a FieldErrors
and returns the normalised value, so a request reports all of its problems at once."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.common.errors import FieldErrors, InvalidArgument
from services.common.ids import parse_uuid

# Control characters other than the layout ones (tab, line feed, carriage return).
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def uuid_field(errors: FieldErrors, value: str, field: str, *, required: bool = True) -> uuid.UUID | None:
    value = value.strip()
    if not value:
        if required:
            errors.add(field, "is required")
        return None
    parsed = parse_uuid(value)
    if parsed is None:
        errors.add(field, "must be a UUID")
    return parsed


def resource_id(value: str, field: str = "id") -> uuid.UUID:
    """The UUID a request names its resource by (Get, Update, Delete, …): alone in the request,
    so a bad one is refused at once rather than collected."""
    parsed = parse_uuid(value.strip())
    if parsed is None:
        raise InvalidArgument(f"{field} must be a UUID", violations=[(field, "must be a UUID")])
    return parsed


def text(errors: FieldErrors, value: str, field: str, maximum: int) -> str:
    """Free text up to `maximum` characters, trimmed, without control characters."""
    value = value.strip()
    if len(value) > maximum:
        errors.add(field, f"must be at most {maximum} characters")
    elif CONTROL_RE.search(value):
        errors.add(field, "must not contain control characters")
    return value


# Hostile strings and out-of-range enums, checked in every request before any handler runs
# (services.common.server): Postgres cannot store NUL (it would fail the statement, a 500), a lone
# surrogate is not text, and proto3 enums are open, so a gRPC caller can send any number.

_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
NUL_OR_SURROGATE = "must not contain a NUL character or a lone surrogate"
_STRING, _ENUM, _MESSAGE = 0, 1, 2


class _Plan:
    """What to check in one message type: by field number, the kind of check and its data."""

    __slots__ = ("fields",)

    def __init__(self) -> None:
        # number → (name, kind, repeated, map value plan or enum numbers or sub-plan, enum choices)
        self.fields: dict[int, tuple[str, int, bool, Any, str]] = {}


_PLANS: dict[str, _Plan | None] = {}


def request_checker(descriptor: Descriptor) -> Callable[[Message], list[tuple[str, str]]] | None:
    """The check of one request type, prepared once (None when the type holds no string or enum
    at any depth: nothing to check). It returns the violations, named by proto field path."""
    plan = _plan(descriptor)
    if plan is None:
        return None

    def check(message: Message) -> list[tuple[str, str]]:
        violations: list[tuple[str, str]] = []
        _walk(message, plan, "", violations)
        return violations

    return check


def _plan(descriptor: Descriptor) -> _Plan | None:
    name = descriptor.full_name
    if name in _PLANS:
        return _PLANS[name]
    plan = _PLANS[name] = _Plan()  # placed before the fields: recursive types (Struct) end here
    for field in descriptor.fields:
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_STRING:
            plan.fields[field.number] = (field.name, _STRING, repeated, None, "")
        elif field.type == FieldDescriptor.TYPE_ENUM:
            enum = field.enum_type
            choices = ", ".join(v.name for v in enum.values)
            plan.fields[field.number] = (field.name, _ENUM, repeated, frozenset(enum.values_by_number), choices)
        elif field.message_type is not None:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                # A map's keys and values are checked; a violation names the map field.
                entry_plan = _plan(entry)
                if entry_plan is not None:
                    plan.fields[field.number] = (field.name, _MESSAGE, True, ("map", entry_plan), "")
            else:
                sub = _plan(entry)
                if sub is not None:
                    plan.fields[field.number] = (field.name, _MESSAGE, repeated, sub, "")
    if not plan.fields:
        _PLANS[name] = None
        return None
    return plan


def _walk(message: Message, plan: _Plan, prefix: str, violations: list[tuple[str, str]]) -> None:
    # ListFields yields only what is set, so an empty request costs one call.
    fields = plan.fields
    for field, value in message.ListFields():
        entry = fields.get(field.number)
        if entry is None:
            continue
        name, kind, repeated, data, choices = entry
        path = prefix + name
        if kind == _STRING:
            if repeated:
                for index, item in enumerate(value):
                    if _BAD_TEXT.search(item):
                        violations.append((f"{path}[{index}]", NUL_OR_SURROGATE))
            elif _BAD_TEXT.search(value):
                violations.append((path, NUL_OR_SURROGATE))
        elif kind == _ENUM:
            if repeated:
                for index, item in enumerate(value):
                    if item not in data:
                        violations.append((f"{path}[{index}]", f"must be one of {choices}"))
            elif value not in data:
                violations.append((path, f"must be one of {choices}"))
        elif isinstance(data, tuple):  # a map: its key and value, named by the map field
            _walk_map(value, data[1], path, violations)
        elif repeated:
            for index, item in enumerate(value):
                _walk(item, data, f"{path}[{index}].", violations)
        else:
            _walk(value, data, path + ".", violations)


def _walk_map(container: Any, plan: _Plan, path: str, violations: list[tuple[str, str]]) -> None:
    key_kind = plan.fields.get(1)
    value_entry = plan.fields.get(2)
    for key in container:
        if key_kind is not None and isinstance(key, str) and _BAD_TEXT.search(key):
            violations.append((path, "must not have a key with a NUL character or a lone surrogate"))
            continue
        if value_entry is None:
            continue
        _, kind, _, data, choices = value_entry
        value = container[key]
        if kind == _STRING and _BAD_TEXT.search(value):
            violations.append((path, NUL_OR_SURROGATE))
        elif kind == _ENUM and value not in data:
            violations.append((path, f"must be one of {choices}"))
        elif kind == _MESSAGE:
            _walk(value, data, path + ".", violations)
