"""Field values into messages, from JSON (bodies) and from text (query parameters, path variables).

Proto3 JSON mapping rules (https://protobuf.dev/programming-guides/json/), with every problem
reported as a field violation named by its JSON path (`user.firstName`, `ids[2]`) instead of
json_format's first-error-only messages: unknown fields, wrong JSON types, out-of-range numbers,
unknown enum values, two members of one oneof. Both the lowerCamelCase and the original field name
are accepted. Enums also accept the value name in any case and without the type's prefix
(`incoming` for DIRECTION_INCOMING), as the HTTP routes of SPEC §8 spell them.

Per-message and per-enum lookup tables are built once (`prepare` at start-up) and cached.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from collections.abc import Callable
from typing import Any

from google.protobuf import field_mask_pb2, json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.naming import lower_camel, snake, upper_snake
from gateway.problems import FieldViolation

Violations = list[FieldViolation]
MAX_DEPTH = 32

FD = FieldDescriptor
_INT_RANGES: dict[int, tuple[int, int]] = {
    **dict.fromkeys((FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32), (-(2**31), 2**31 - 1)),
    **dict.fromkeys((FD.TYPE_UINT32, FD.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64), (-(2**63), 2**63 - 1)),
    **dict.fromkeys((FD.TYPE_UINT64, FD.TYPE_FIXED64), (0, 2**64 - 1)),
}
_FLOAT32_MAX = 3.4028234663852886e38
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_NUMBER_TEXT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRUE_TEXT = frozenset(("true", "1"))
_FALSE_TEXT = frozenset(("false", "0"))

TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
FIELD_MASK = "google.protobuf.FieldMask"
WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
# Well-known types whose JSON form is a string (so they can also come from a query parameter).
STRING_TYPES = frozenset((TIMESTAMP, DURATION, FIELD_MASK))
# Well-known types json_format parses as a whole (any JSON shape).
OPAQUE_TYPES = frozenset(
    (
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.Any",
        "google.protobuf.Empty",
    )
)

# Messages whose JSON form is not an object of their fields.
SPECIAL_JSON_TYPES = STRING_TYPES | WRAPPERS | OPAQUE_TYPES


class InvalidValue(ValueError):
    """One value that does not fit its field; the message is the violation's description."""


# Lookup tables, built once per message and enum type.


class MessageFields:
    def __init__(self, descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        self.by_key: dict[str, FieldDescriptor] = {}
        for field in descriptor.fields:
            self.by_key[field.json_name] = field
            self.by_key[field.name] = field


class EnumValues:
    def __init__(self, descriptor: EnumDescriptor) -> None:
        self.descriptor = descriptor
        self.exact = {value.name: value.number for value in descriptor.values}
        self.numbers = frozenset(value.number for value in descriptor.values)
        prefix = _value_prefix(descriptor)
        self.lenient: dict[str, int] = {}
        self.short_names: list[str] = []
        for value in descriptor.values:
            self.lenient.setdefault(value.name.lower(), value.number)
            if prefix and value.name.startswith(prefix) and len(value.name) > len(prefix):
                short = value.name[len(prefix) :].lower()
                self.lenient.setdefault(short, value.number)
                if not _unspecified(value.name, value.number):
                    self.short_names.append(short)
            elif not _unspecified(value.name, value.number):
                self.short_names.append(value.name.lower())

    def parse(self, value: object, *, from_text: bool) -> int:
        if isinstance(value, str):
            number = self.exact.get(value)
            if number is None:
                number = self.lenient.get(value.lower())
            if number is None and from_text and _INTEGER_TEXT.fullmatch(value):
                return self.parse(int(value), from_text=True)
            if number is not None:
                return number
        elif isinstance(value, int) and not isinstance(value, bool) and self._accepts(value):
            return value
        choices = self.short_names if from_text else [n for n, v in self.exact.items() if not _unspecified(n, v)]
        raise InvalidValue("must be one of " + ", ".join(choices))

    def _accepts(self, number: int) -> bool:
        # Proto3 enums are open: an unknown number still round-trips.
        return number in self.numbers or (not self.descriptor.is_closed and -(2**31) <= number < 2**31)


def _unspecified(name: str, number: int) -> bool:
    """The zero value that stands for "not set" (`DIRECTION_UNSPECIFIED`): accepted, not advertised."""
    return number == 0 and name.endswith("UNSPECIFIED")


def _value_prefix(descriptor: EnumDescriptor) -> str:
    """The prefix every value name carries: `DIRECTION_` for enum Direction, by the style guide's
    convention; otherwise the longest common `_`-ended prefix of the names, if any."""
    names = [value.name for value in descriptor.values]
    conventional = upper_snake(descriptor.name) + "_"
    if all(name.startswith(conventional) for name in names):
        return conventional
    if len(names) < 2:
        return ""
    common = names[0]
    for name in names[1:]:
        while not name.startswith(common):
            common = common[:-1]
    return common[: common.rfind("_") + 1]


_MESSAGES: dict[str, MessageFields] = {}
_ENUMS: dict[str, EnumValues] = {}


def message_fields(descriptor: Descriptor) -> MessageFields:
    fields = _MESSAGES.get(descriptor.full_name)
    if fields is None:
        fields = _MESSAGES[descriptor.full_name] = MessageFields(descriptor)
    return fields


def enum_values(descriptor: EnumDescriptor) -> EnumValues:
    values = _ENUMS.get(descriptor.full_name)
    if values is None:
        values = _ENUMS[descriptor.full_name] = EnumValues(descriptor)
    return values


def prepare(descriptor: Descriptor) -> None:
    """Builds the lookup tables of a message and of every type reachable from it."""
    if descriptor.full_name in _MESSAGES:
        return
    message_fields(descriptor)
    for field in descriptor.fields:
        if field.enum_type is not None:
            enum_values(field.enum_type)
        if field.message_type is not None:
            prepare(field.message_type)


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def is_nested_message(field: FieldDescriptor) -> bool:
    """A singular field holding an ordinary message, whose own fields a dotted path may reach."""
    message = field.message_type
    return (
        message is not None
        and not field.is_repeated
        and not message.GetOptions().map_entry
        and message.full_name not in SPECIAL_JSON_TYPES
    )


# JSON → message.


def merge_json_object(message: Message, value: object, path: str, violations: Violations, depth: int = 0) -> None:
    """Merges a JSON object into `message`; `path` is the JSON path of `message` ("" at the top)."""
    descriptor = message.DESCRIPTOR
    if not isinstance(value, dict):
        violations.append(FieldViolation(path, "must be an object"))
        return
    if depth > MAX_DEPTH:
        violations.append(FieldViolation(path, "is nested too deeply"))
        return
    fields = message_fields(descriptor)
    seen: dict[str, str] = {}
    oneofs: dict[str, str] = {}
    for key, item in value.items():
        field = fields.by_key.get(key)
        if field is None:
            violations.append(FieldViolation(_join(path, key), f"is not a field of {descriptor.name}"))
            continue
        here = _join(path, field.json_name)
        if field.name in seen:
            violations.append(FieldViolation(here, f"is given twice (as {seen[field.name]} and {key})"))
            continue
        seen[field.name] = key
        oneof = field.containing_oneof
        if oneof is not None and item is not None:
            if oneof.name in oneofs:
                violations.append(
                    FieldViolation(here, f"cannot be set together with {oneofs[oneof.name]} (one of {oneof.name})")
                )
                continue
            oneofs[oneof.name] = field.json_name
        set_json_field(message, field, item, here, violations, depth)


def set_json_field(
    message: Message, field: FieldDescriptor, value: object, path: str, violations: Violations, depth: int
) -> None:
    if value is None and not (field.message_type and field.message_type.full_name == "google.protobuf.Value"):
        return  # null means "not set" in proto3 JSON
    if is_map(field):
        _set_json_map(message, field, value, path, violations, depth)
    elif field.is_repeated:
        if not isinstance(value, list):
            violations.append(FieldViolation(path, "must be an array"))
            return
        container = getattr(message, field.name)
        if field.message_type is not None:
            for index, item in enumerate(value):
                _merge_json_message(container.add(), item, f"{path}[{index}]", violations, depth + 1)
        else:
            items = []
            for index, item in enumerate(value):
                try:
                    items.append(json_scalar(field, item))
                except InvalidValue as exc:
                    violations.append(FieldViolation(f"{path}[{index}]", str(exc)))
            _guard(lambda: container.extend(items), path, violations)
    elif field.message_type is not None:
        _merge_json_message(getattr(message, field.name), value, path, violations, depth + 1)
    else:
        try:
            converted = json_scalar(field, value)
        except InvalidValue as exc:
            violations.append(FieldViolation(path, str(exc)))
            return
        _guard(lambda: setattr(message, field.name, converted), path, violations)


def _merge_json_message(message: Message, value: object, path: str, violations: Violations, depth: int) -> None:
    name = message.DESCRIPTOR.full_name
    if name in WRAPPERS:
        if value is not None:
            set_json_field(message, message.DESCRIPTOR.fields_by_name["value"], value, path, violations, depth)
        message.SetInParent()
    elif name in STRING_TYPES:
        if not isinstance(value, str):
            violations.append(FieldViolation(path, _STRING_TYPE_HINTS[name]))
            return
        set_from_string_type(message, value, path, violations)
    elif name in OPAQUE_TYPES:
        try:
            json_format.ParseDict(value, message)
        except (json_format.ParseError, ValueError, TypeError):
            violations.append(FieldViolation(path, f"is not a valid {message.DESCRIPTOR.name}"))
    else:
        merge_json_object(message, value, path, violations, depth)
        message.SetInParent()


def _set_json_map(
    message: Message, field: FieldDescriptor, value: object, path: str, violations: Violations, depth: int
) -> None:
    if not isinstance(value, dict):
        violations.append(FieldViolation(path, "must be an object"))
        return
    entry = field.message_type
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    container = getattr(message, field.name)
    for raw_key, item in value.items():
        here = f"{path}[{raw_key}]"
        try:
            key = text_scalar(key_field, raw_key)
        except InvalidValue as exc:
            violations.append(FieldViolation(here, f"key {exc}"))
            continue
        if value_field.message_type is not None:
            _merge_json_message(container[key], item, here, violations, depth + 1)
            continue
        try:
            converted = json_scalar(value_field, item)
        except InvalidValue as exc:
            violations.append(FieldViolation(here, str(exc)))
            continue
        _guard(functools.partial(container.__setitem__, key, converted), here, violations)


def json_scalar(field: FieldDescriptor, value: object) -> Any:
    """A JSON value for a scalar or enum field, converted (InvalidValue if it does not fit)."""
    kind = field.type
    if kind == FD.TYPE_STRING:
        if isinstance(value, str):
            return value
        raise InvalidValue("must be a string")
    if kind == FD.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        raise InvalidValue("must be true or false")
    if kind in _INT_RANGES:
        if isinstance(value, bool):
            raise InvalidValue("must be an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise InvalidValue("must be an integer")
            value = int(value)
        if isinstance(value, str):
            return _integer_text(kind, value)
        if isinstance(value, int):
            return _in_range(kind, value)
        raise InvalidValue("must be an integer")
    if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        if isinstance(value, str):
            return _float_text(kind, value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _float_range(kind, float(value))
        raise InvalidValue("must be a number")
    if kind == FD.TYPE_BYTES:
        if isinstance(value, str):
            return _base64(value)
        raise InvalidValue("must be a base64 string")
    if kind == FD.TYPE_ENUM:
        return enum_values(field.enum_type).parse(value, from_text=False)
    raise InvalidValue("cannot be set from JSON")  # groups: not in proto3


# Text (query parameters, path variables) → message.


def text_scalar(field: FieldDescriptor, text: str) -> Any:
    """A query-string or path value for a scalar or enum field, converted."""
    kind = field.type
    if kind == FD.TYPE_STRING:
        return text
    if kind == FD.TYPE_BOOL:
        lowered = text.lower()
        if lowered in _TRUE_TEXT:
            return True
        if lowered in _FALSE_TEXT:
            return False
        raise InvalidValue("must be true or false")
    if kind in _INT_RANGES:
        return _integer_text(kind, text)
    if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return _float_text(kind, text)
    if kind == FD.TYPE_BYTES:
        return _base64(text)
    if kind == FD.TYPE_ENUM:
        return enum_values(field.enum_type).parse(text, from_text=True)
    raise InvalidValue("cannot be set from text")


def settable_from_text(field: FieldDescriptor) -> bool:
    """Whether a query parameter or path variable can set this field (as the leaf of a path)."""
    if is_map(field):
        return False
    if field.message_type is None:
        return True
    name = field.message_type.full_name
    return not field.is_repeated and (name in STRING_TYPES or name in WRAPPERS)


def set_text_field(
    message: Message, field: FieldDescriptor, texts: list[str], path: str, violations: Violations
) -> None:
    """Sets a leaf field (see settable_from_text) of `message` from one or more text values."""
    if field.is_repeated:
        items = []
        for index, text in enumerate(texts):
            try:
                items.append(text_scalar(field, text))
            except InvalidValue as exc:
                violations.append(FieldViolation(f"{path}[{index}]", str(exc)))
        container = getattr(message, field.name)
        _guard(lambda: container.extend(items), path, violations)
        return
    if len(texts) > 1:
        violations.append(FieldViolation(path, "is given more than once"))
        return
    text = texts[0]
    if field.message_type is not None:
        target = getattr(message, field.name)
        if field.message_type.full_name in WRAPPERS:
            set_text_field(target, target.DESCRIPTOR.fields_by_name["value"], [text], path, violations)
            target.SetInParent()
        else:
            set_from_string_type(target, text, path, violations)
        return
    try:
        converted = text_scalar(field, text)
    except InvalidValue as exc:
        violations.append(FieldViolation(path, str(exc)))
        return
    _guard(lambda: setattr(message, field.name, converted), path, violations)


def set_from_string_type(message: Message, text: str, path: str, violations: Violations) -> None:
    """Timestamp, Duration and FieldMask from their JSON string forms."""
    name = message.DESCRIPTOR.full_name
    try:
        if name == FIELD_MASK:
            assert isinstance(message, field_mask_pb2.FieldMask)
            message.paths.extend(parse_field_mask(text))
        else:
            message.FromJsonString(text)  # type: ignore[attr-defined]
    except ValueError:
        violations.append(FieldViolation(path, _STRING_TYPE_HINTS[name]))


def parse_field_mask(text: str) -> list[str]:
    """`firstName,user.lastName` (or snake_case) → ["first_name", "user.last_name"]."""
    paths = []
    for raw in text.split(","):
        raw = raw.strip()
        if not raw:
            continue
        segments = raw.split(".")
        if not all(_FIELD_NAME.fullmatch(s) for s in segments):
            raise ValueError(raw)
        paths.append(".".join(snake(s) for s in segments))
    return paths


_STRING_TYPE_HINTS = {
    TIMESTAMP: "must be an RFC 3339 timestamp such as 2030-01-31T09:00:00Z",
    DURATION: "must be a duration in seconds such as 3.5s",
    FIELD_MASK: "must be a comma-separated list of field names such as firstName,lastName",
}


# Helpers.


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def json_path(names: list[str]) -> str:
    """Proto field names → their JSON path (each segment in lowerCamelCase)."""
    return ".".join(lower_camel(n) for n in names)


def _guard(action: Callable[[], object], path: str, violations: Violations) -> None:
    """Runs a protobuf setter; values already converted should fit, but protobuf has the last word."""
    try:
        action()
    except UnicodeEncodeError:  # a lone surrogate, from a JSON escape: not text (SPEC §3 "Strings")
        violations.append(FieldViolation(path, "must not contain a NUL character or a lone surrogate"))
    except (TypeError, ValueError):
        violations.append(FieldViolation(path, "is not a valid value for this field"))


def _integer_text(kind: int, text: str) -> int:
    if not _INTEGER_TEXT.fullmatch(text):
        raise InvalidValue("must be an integer")
    return _in_range(kind, int(text))


def _in_range(kind: int, value: int) -> int:
    low, high = _INT_RANGES[kind]
    if not low <= value <= high:
        raise InvalidValue(f"must be an integer from {low} to {high}")
    return value


def _float_text(kind: int, text: str) -> float:
    special = _SPECIAL_FLOATS.get(text)
    if special is not None:
        return special
    if not _NUMBER_TEXT.fullmatch(text):
        raise InvalidValue("must be a number")
    return _float_range(kind, float(text))


def _float_range(kind: int, value: float) -> float:
    if math.isinf(value) or (kind == FD.TYPE_FLOAT and abs(value) > _FLOAT32_MAX):
        raise InvalidValue("is out of range")
    return value


def _base64(text: str) -> bytes:
    alphabet = b"-_" if ("-" in text or "_" in text) else None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=alphabet, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidValue("must be base64") from None
