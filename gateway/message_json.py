"""Proto message → JSON-ready Python value, with an encoder prepared once per message type.

What: `encoder_for(descriptor)` returns a function `message → dict | list | str | ...` that
`orjson.dumps` turns into the response body. Why: the generic
`json_format.MessageToDict(message, always_print_fields_with_no_presence=True)` walks the
descriptors of every field of every message on every call and formats timestamps through
`datetime`; it was 43 % of the gateway's CPU on an inbox page. Here the walking happens once, at
start-up: each message type gets a small Python function, generated from its descriptor and
compiled with `exec`, that reads its fields by attribute with the conversion of each field chosen
beforehand (`python -m bench.json_encoding` measures both: about 5x faster on an inbox page).

Why generated source rather than closures: on the inbox page, with the same timestamp formatting
in each, a loop over a per-field table of closures took 1.26-1.34x the time of the generated
functions, and a `ListFields()`-driven loop (converter looked up per field descriptor) 1.33-1.39x
(medians of interleaved runs on the 2-core machine). Straight-line code keeps each value in a
local, and each conversion is inlined or one direct call; reading a field by attribute costs no
more than ListFields' tuples.

The invariant: `orjson.dumps(encoder_for(d)(m))` is byte for byte
`orjson.dumps(json_format.MessageToDict(m, always_print_fields_with_no_presence=True))`, errors
included (tests/gateway/test_json_encoding.py checks it on every response type the gateway serves
and on random messages of a test proto holding every field kind). That means copying json_format's
choices, some of them surprising:

- key order: first the fields `ListFields()` reports, by field number (a field with presence that
  is set; a field without presence that is not at its zero value, bit for bit, so -0.0 counts
  as set; a non-empty repeated field or map), then the fields without presence left out so far,
  in declaration order, with their default value;
- int64, uint64, sint64, fixed64, sfixed64 as decimal strings; 32-bit integers as numbers;
- float and double: NaN, Infinity, -Infinity as strings; a float (32-bit) as the shortest decimal
  that reads back to the same float32 (`type_checkers.ToShortestFloat`, json_format's own);
- enums by the first name declared for the number (or a `pb.enumvalue.json` option), an unknown
  number as the number, google.protobuf.NullValue as null;
- bytes in standard base64 with padding; maps in the container's own iteration order, keys as
  strings, bool keys as "true"/"false";
- well-known types: Timestamp as RFC 3339 with 0, 3, 6 or 9 fractional digits (formatted here,
  without datetime: it was 11 % of the CPU by itself); Duration and FieldMask through their own
  `ToJsonString` (json_format calls the same); wrappers as their value; Struct, Value and ListValue
  as the JSON they hold; Any through json_format itself (it must look the packed type up and parse
  its bytes: rare, and not worth a second implementation).

What is generated, for capsule.capsules.v1.InboxSummary (`generated_source(descriptor)` shows any):

    def encode_capsule_capsules_v1_InboxSummary(m):
        out = {}
        # Set fields, in field number order (as ListFields() reports them).
        v0 = m.sealed
        if v0:
            out['sealed'] = str(v0)
        ...                                             # ready, opened, total alike
        if m.HasField('next_unlocks_at'):
            out['nextUnlocksAt'] = timestamp_json(m.next_unlocks_at)
        # Fields without presence left at their default, in declaration order.
        if not v0:
            out['sealed'] = '0'
        ...
        return out

Failures: a generated encoder raises where json_format would (a timestamp out of range, a Value
holding NaN, ...). `MessageEncoder` then re-runs json_format, so the caller gets exactly json_format's
answer or exception; if json_format succeeds where the encoder failed, that is a bug here, logged
once per type, and the answer is still right. Types the generator does not model (extensions)
get json_format directly.

Safety of the generated code: its text contains only identifiers derived from descriptor names
(checked with `str.isidentifier`, else read with `getattr`) and `repr()` literals of strings and
numbers; every other value (enum name tables, helpers) is bound in the functions' namespace, never
spelled in the source. Nothing from a request or a response ever reaches the source. The source of
each function is kept (`encoder.source`, and in `linecache` so tracebacks show the line).
"""

from __future__ import annotations

import binascii
import datetime
import keyword
import linecache
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

log = logging.getLogger(__name__)

Encoder = Callable[[Message], Any]
FD = FieldDescriptor

_INT64_TYPES = frozenset((FD.CPPTYPE_INT64, FD.CPPTYPE_UINT64))
_TIMESTAMP = "google.protobuf.Timestamp"
_WRAPPERS_FILE = "google/protobuf/wrappers.proto"
_NULL_VALUE = "google.protobuf.NullValue"


# Values: the conversions json_format applies to one scalar.


def _nonfinite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _double(value: float) -> float | str:
    return value if value - value == 0.0 else _nonfinite(value)


def _float(value: float) -> float | str:
    return type_checkers.ToShortestFloat(value) if value - value == 0.0 else _nonfinite(value)


def _bytes(value: bytes) -> str:
    return binascii.b2a_base64(value, newline=False).decode("ascii")


def _map_key(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Well-known types whose JSON is not an object of their fields.

_TIMESTAMP_MIN = -62135596800  # 0001-01-01T00:00:00Z
_TIMESTAMP_MAX = 253402300799  # 9999-12-31T23:59:59Z
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
_DAY_CACHE_LIMIT = 4096
_days: dict[int, str] = {}  # days since the epoch → "YYYY-MM-DDT"; a page has few distinct days
_HOURS_MINUTES = [f"{h:02d}:{m:02d}" for h in range(24) for m in range(60)]
_SECONDS = [f":{s:02d}" for s in range(60)]
_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]


def _day(days: int) -> str:
    if len(_days) >= _DAY_CACHE_LIMIT:
        _days.clear()
    text = _days[days] = datetime.date.fromordinal(_EPOCH_ORDINAL + days).isoformat() + "T"
    return text


def timestamp_json(message: Any) -> str:
    """Timestamp.ToJsonString(), without datetime arithmetic: same text, same ValueError."""
    seconds = message.seconds
    nanos = message.nanos
    if not (_TIMESTAMP_MIN <= seconds <= _TIMESTAMP_MAX and 0 <= nanos < 1_000_000_000):
        return message.ToJsonString()  # raises json_format's ValueError
    days = seconds // 86400
    in_day = seconds - days * 86400
    text = (_days.get(days) or _day(days)) + _HOURS_MINUTES[in_day // 60] + _SECONDS[in_day % 60]
    if not nanos:
        return text + "Z"
    if not nanos % 1_000_000:
        return text + _MILLIS[nanos // 1_000_000]
    if not nanos % 1000:
        return f"{text}.{nanos // 1000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def to_json_string(message: Any) -> str:
    return message.ToJsonString()  # type: ignore[no-any-return]


def value_json(message: Any) -> Any:
    kind = message.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "number_value":
        number = message.number_value
        if number - number != 0.0:
            raise ValueError("Value.number_value is not finite")  # json_format refuses it too
        return number
    if kind == "string_value":
        return message.string_value
    if kind == "bool_value":
        return message.bool_value
    if kind == "struct_value":
        return struct_json(message.struct_value)
    return list_value_json(message.list_value)


def struct_json(message: Any) -> dict[str, Any]:
    fields = message.fields
    return {key: value_json(fields[key]) for key in fields}


def list_value_json(message: Any) -> list[Any]:
    return [value_json(item) for item in message.values]


def any_json(message: Message) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


_SPECIAL_ENCODERS: dict[str, Callable[[Any], Any]] = {
    _TIMESTAMP: timestamp_json,
    "google.protobuf.Duration": to_json_string,
    "google.protobuf.FieldMask": to_json_string,
    "google.protobuf.Struct": struct_json,
    "google.protobuf.Value": value_json,
    "google.protobuf.ListValue": list_value_json,
    "google.protobuf.Any": any_json,
}


# Preparation.


class _Generator:
    """Writes and compiles one function per message type, all in one namespace.

    Generated functions call each other by name, looked up when they run, so recursive types
    (a message holding itself, Struct ↔ Value) need no special order.
    """

    def __init__(self) -> None:
        self.names: dict[str, str] = {}  # message full name → function name in the namespace
        self.namespace: dict[str, Any] = {
            "__builtins__": {"str": str, "list": list, "dict": dict, "getattr": getattr},
            "double": _double,
            "float32": _float,
            "b64": _bytes,
            "map_key": _map_key,
            "copysign": math.copysign,
            **{fn.__name__: fn for fn in set(_SPECIAL_ENCODERS.values())},
        }
        self.enum_tables: dict[str, str] = {}  # enum full name → its number → name table
        self.sources: dict[str, str] = {}
        self.lock = threading.RLock()

    def encoder(self, descriptor: Descriptor) -> Encoder:
        with self.lock:
            name = self.function_name(descriptor)
            return self.namespace[name]  # type: ignore[no-any-return]

    def function_name(self, descriptor: Descriptor) -> str:
        full_name = descriptor.full_name
        name = self.names.get(full_name)
        if name is not None:
            return name
        special = _SPECIAL_ENCODERS.get(full_name)
        if special is not None:
            self.names[full_name] = special.__name__
            return special.__name__
        name = self._constant("encode_" + full_name.replace(".", "_"), None)  # reserved
        self.names[full_name] = name  # before the body: a recursive field finds it
        if descriptor.extension_ranges:
            # ListFields() would report extensions too: let json_format do these.
            self.namespace[name] = _reference
            return name
        if descriptor.file.name == _WRAPPERS_FILE:
            value = descriptor.fields_by_name["value"]
            lines = [f"def {name}(m):", f"    return {self._convert(value, 'm.value')}"]
        else:
            lines = self._message_function(name, descriptor)
        self._compile(name, full_name, lines)
        return name

    def _unique(self, base: str) -> str:
        name, n = base, 1
        while name in self.namespace:
            n += 1
            name = f"{base}_{n}"
        return name

    def _constant(self, base: str, value: object) -> str:
        name = self._unique(base)
        self.namespace[name] = value
        return name

    def _message_function(self, name: str, descriptor: Descriptor) -> list[str]:
        lines = [f"def {name}(m):", "    out = {}"]
        oneofs: dict[str, str] = {}  # oneof name → local holding WhichOneof's answer
        for oneof in descriptor.oneofs:
            if len(oneof.fields) > 1:
                oneofs[oneof.name] = f"which_{len(oneofs)}"
                lines.append(f"    {oneofs[oneof.name]} = m.WhichOneof({oneof.name!r})")
        lines.append("    # Set fields, in field number order (as ListFields() reports them).")
        declared = {field.number: position for position, field in enumerate(descriptor.fields)}
        defaults: list[tuple[int, str, str, str]] = []  # declaration position, key, default, is-set test
        for index, field in enumerate(sorted(descriptor.fields, key=lambda f: f.number)):
            key = repr(field.json_name)
            read = _attribute("m", field.name)
            if field.has_presence:
                oneof = field.containing_oneof
                if oneof is not None and oneof.name in oneofs:
                    lines.append(f"    if {oneofs[oneof.name]} == {field.name!r}:")
                else:
                    lines.append(f"    if m.HasField({field.name!r}):")
                lines.append(f"        out[{key}] = {self._convert(field, read)}")
                continue
            local = f"v{index}"
            lines.append(f"    {local} = {read}")
            if _is_map(field):
                value, empty = self._map(field, local), "{}"
            elif field.is_repeated:
                value, empty = self._repeated(field, local), "[]"
            else:
                value, empty = self._convert(field, local), self._default(field)
            is_set = f"({local} or copysign(1.0, {local}) < 0.0)" if _is_floating(field) else local
            lines.append(f"    if {is_set}:")
            lines.append(f"        out[{key}] = {value}")
            defaults.append((declared[field.number], key, empty, is_set))
        if defaults:
            lines.append("    # Fields without presence left at their default, in declaration order.")
        for _, key, empty, is_set in sorted(defaults):
            lines.append(f"    if not {is_set}:")
            lines.append(f"        out[{key}] = {empty}")
        lines.append("    return out")
        return lines

    def _convert(self, field: FieldDescriptor, expr: str) -> str:
        """Python source converting `expr`, one value of `field`, to its JSON value."""
        if field.message_type is not None:
            return f"{self.function_name(field.message_type)}({expr})"
        cpp = field.cpp_type
        if field.type == FD.TYPE_ENUM:
            enum = field.enum_type
            if enum.full_name == _NULL_VALUE:
                return "None"
            table = self.enum_tables.get(enum.full_name)
            if table is None:
                table = self.enum_tables[enum.full_name] = self._constant(f"names_{enum.name}", _enum_names(enum))
            # A closed enum never holds an unknown number; if it did, json_format raises: so do we.
            return f"{table}[{expr}]" if enum.is_closed else f"{table}.get({expr}, {expr})"
        if field.type == FD.TYPE_BYTES:
            return f"b64({expr})"
        if cpp in _INT64_TYPES:
            return f"str({expr})"
        if cpp == FD.CPPTYPE_DOUBLE:
            return f"double({expr})"
        if cpp == FD.CPPTYPE_FLOAT:
            return f"float32({expr})"
        return expr  # string, bool, 32-bit integers: already their JSON value

    def _repeated(self, field: FieldDescriptor, local: str) -> str:
        item = self._convert(field, "x")
        return f"list({local})" if item == "x" else f"[{item} for x in {local}]"

    def _map(self, field: FieldDescriptor, local: str) -> str:
        entry = field.message_type
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        if key_field.type == FD.TYPE_BOOL:
            key = "map_key(k)"
        elif key_field.type == FD.TYPE_STRING:
            key = "k"
        else:
            key = "str(k)"
        value = self._convert(value_field, "x")
        if key == "k" and value == "x":
            return f"dict({local})"
        return f"{{{key}: {value} for k, x in {local}.items()}}"

    def _default(self, field: FieldDescriptor) -> str:
        """The JSON of the field's default value, as a Python literal."""
        if field.type == FD.TYPE_ENUM:
            if field.enum_type.full_name == _NULL_VALUE:
                return "None"
            names = _enum_names(field.enum_type)
            value: object = names.get(field.default_value, field.default_value)
        elif field.type == FD.TYPE_BYTES:
            value = _bytes(field.default_value)
        elif field.cpp_type in _INT64_TYPES:
            value = str(field.default_value)
        elif field.cpp_type == FD.CPPTYPE_DOUBLE:
            value = _double(field.default_value)
        elif field.cpp_type == FD.CPPTYPE_FLOAT:
            value = _float(field.default_value)
        else:
            value = field.default_value
        assert value is None or type(value) in (str, int, float, bool), value
        if isinstance(value, float) and value - value != 0.0:  # pragma: no cover - proto3 defaults are 0
            return self._constant("default", value)
        return repr(value)

    def _compile(self, name: str, full_name: str, lines: list[str]) -> None:
        source = "\n".join([f"# {full_name}", *lines]) + "\n"
        filename = f"<message_json {full_name}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        exec(compile(source, filename, "exec"), self.namespace)
        self.namespace[name].source = source
        self.sources[full_name] = source


def _attribute(owner: str, name: str) -> str:
    if name.isidentifier() and not keyword.iskeyword(name):
        return f"{owner}.{name}"
    return f"getattr({owner}, {name!r})"


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _is_floating(field: FieldDescriptor) -> bool:
    # ListFields() sees -0.0 as set (its bits are not zero) though it is falsy.
    return not field.is_repeated and field.cpp_type in (FD.CPPTYPE_DOUBLE, FD.CPPTYPE_FLOAT)


def _enum_names(enum: EnumDescriptor) -> dict[int, Any]:
    option = _enum_json_option()
    names: dict[int, Any] = {}
    for number in dict.fromkeys(v.number for v in enum.values):
        # Looked up as json_format does: with aliases, iterating values_by_number is not the same.
        value = enum.values_by_number[number]
        options = value.GetOptions()
        if option is not None and options.HasExtension(option):
            names[number] = options.Extensions[option].string
        else:
            names[number] = value.name
    return names


def _enum_json_option() -> Any:
    """The `pb.enumvalue.json` extension when loaded, which json_format honours."""
    try:
        return descriptor_pool.Default().FindExtensionByName("pb.enumvalue.json")
    except KeyError:
        return None


def _reference(message: Message) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


_generator = _Generator()


def generated_source(descriptor: Descriptor) -> str:
    """The generated source of a message type's encoder (prepared on demand), for reading."""
    encoder_for(descriptor)
    return _generator.sources.get(descriptor.full_name, "")


def encoder_for(descriptor: Descriptor) -> Encoder:
    """The generated encoder of a message type (built on first use, then cached).

    It raises on what json_format refuses; `MessageEncoder` adds json_format's own answer then.
    """
    return _generator.encoder(descriptor)


class MessageEncoder:
    """The JSON value of messages of one type: `MessageEncoder(Capsule.DESCRIPTOR)(capsule)`."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        self.fast = encoder_for(descriptor)
        self._reported = False

    def __call__(self, message: Message) -> Any:
        try:
            return self.fast(message)
        except Exception as exc:
            # json_format's answer, or its exception: identical behaviour whatever happens.
            answer = _reference(message)
            if not self._reported:
                self._reported = True
                log.error(
                    "message_json: encoder of %s failed (%r) where json_format did not", self.descriptor.full_name, exc
                )
            return answer
