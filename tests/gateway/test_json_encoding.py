"""gateway.message_json against json_format: the same bytes for every message, errors included.

The reference is what the gateway answered before: `orjson.dumps(json_format.MessageToDict(m,
always_print_fields_with_no_presence=True))`. Checked on
  1. every response type of every route the gateway serves (the topology's proto modules), empty,
     with representative values, with edge values and with seeded random mixes of both;
  2. seeded random messages of a test-only proto (protos/json_kinds.proto) holding every field
     kind of the proto3 JSON mapping: all scalar types, presence, oneofs, repeated, maps of every
     key type, enums (aliases, unknown numbers, NullValue) and the well-known types;
  3. timestamps at the edges of their range and of each fractional-digit format.
The generated encoders are called directly (`encoder_for`), so json_format's fallback in
`MessageEncoder` cannot hide a difference.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import random
import string
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from capsule.capsules.v1 import capsules_pb2
from google.protobuf import (
    any_pb2,
    duration_pb2,
    json_format,
    message_factory,
    struct_pb2,
    text_format,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.descriptors import HttpBinding, Rpc, http_bindings, load_services
from gateway.message_json import MessageEncoder, encoder_for, generated_source, timestamp_json
from gateway.routing import RouteTable
from gateway.transcoding import Transcoder
from mesh.topology import SERVICES

FD = FieldDescriptor
TIMESTAMP_MIN = -62135596800
TIMESTAMP_MAX = 253402300799
WRAPPERS_FILE = "google/protobuf/wrappers.proto"


def reference(message: Message) -> bytes:
    return orjson.dumps(json_format.MessageToDict(message, always_print_fields_with_no_presence=True))


def assert_identical(message: Message) -> None:
    expected = reference(message)
    got = orjson.dumps(encoder_for(message.DESCRIPTOR)(message))
    if got != expected:
        pytest.fail(
            f"{message.DESCRIPTOR.full_name} differs from json_format\n"
            f"message:\n{text_format.MessageToString(message)}\nexpected: {expected!r}\ngot:      {got!r}\n"
            f"generated:\n{generated_source(message.DESCRIPTOR)}"
        )


# Values: a representative pool (what the services send) and an edge pool (what they could).


def float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


REPRESENTATIVE: dict[str, list[Any]] = {
    "string": [
        "0193a0c4-7a7e-7cc1-9c51-5f0d2b8e1a00",
        "ada.lovelace",
        "Ada",
        "ada@example.com",
        "https://cdn.example.com/avatars/ada.png",
        "FR",
        "For your thirtieth birthday",
        "Cg5pbmJveBIPCg0Iwe2XvwYQ4JWbAQ",
    ],
    "int32": [1, 20, 3600, 21600],
    "uint32": [1, 8080, 50051],
    "int64": [1, 42, 12345],
    "uint64": [1, 42, 10_000],
    "double": [0.5, 1.25, 3.141592653589793, 100.0],
    "float": [0.5, 0.1, 1.25, 3.14],
    "bool": [True],
    "bytes": [b"hello", b"\x00\x01\x02"],
}
EDGE: dict[str, list[Any]] = {
    "string": ["", "é", "日本語", "😀 emoji", "\u2028\u2029", '"quoted" \\ /', "\x00\x1f\x7f\n\t", "x" * 2000],
    "int32": [0, -1, 2**31 - 1, -(2**31)],
    "uint32": [0, 2**32 - 1],
    "int64": [0, -1, 2**53 + 1, 2**63 - 1, -(2**63)],
    "uint64": [0, 2**53 + 1, 2**64 - 1],
    "double": [0.0, -0.0, math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308, 1e-7, 1e21, 0.1, -2.5e-8],
    "float": [
        0.0,
        -0.0,
        math.nan,
        math.inf,
        -math.inf,
        float32(3.4028234663852886e38),
        float32(1.401298464324817e-45),
        float32(1.17549435e-38),
        float32(16777217.0),
        float32(0.1),
        float32(1e-7),
        float32(123456.789),
        float32(-9.99e20),
    ],
    "bool": [False, True],
    "bytes": [b"", b"\x00", b"\xff\xfe\xfd", bytes(range(256)), b"ab?>"],
}
REPRESENTATIVE_TIMES = [
    (1_760_000_000 + i * 86_461, nanos) for i, nanos in enumerate((0, 123_456_000, 500_000_000, 999_999_000))
]
EDGE_TIMES = [
    (TIMESTAMP_MIN, 0),
    (TIMESTAMP_MAX, 999_999_999),
    (0, 0),
    (-1, 999_999_999),
    (951_782_400, 1),  # 2000-02-29
    (1_000_000_000, 1_000),
    (1_000_000_000, 1_000_000),
    (4_107_542_399, 999_000_000),  # 2100-02-28T23:59:59.999
]

KIND_POOL = {
    FD.TYPE_STRING: "string",
    FD.TYPE_INT32: "int32",
    FD.TYPE_SINT32: "int32",
    FD.TYPE_SFIXED32: "int32",
    FD.TYPE_UINT32: "uint32",
    FD.TYPE_FIXED32: "uint32",
    FD.TYPE_INT64: "int64",
    FD.TYPE_SINT64: "int64",
    FD.TYPE_SFIXED64: "int64",
    FD.TYPE_UINT64: "uint64",
    FD.TYPE_FIXED64: "uint64",
    FD.TYPE_DOUBLE: "double",
    FD.TYPE_FLOAT: "float",
    FD.TYPE_BOOL: "bool",
    FD.TYPE_BYTES: "bytes",
}


class Filler:
    """Sets fields of any message from a value pool; `presence` is the chance each field is set."""

    def __init__(self, rng: random.Random, pools: list[dict[str, list[Any]]], presence: float, max_depth: int = 3):
        self.rng = rng
        self.pools = pools
        self.presence = presence
        self.max_depth = max_depth

    def pick(self, pool: str) -> Any:
        return self.rng.choice(self.rng.choice(self.pools)[pool])

    def time(self) -> tuple[int, int]:
        times = [
            *(REPRESENTATIVE_TIMES if any(p is REPRESENTATIVE for p in self.pools) else []),
            *(EDGE_TIMES if any(p is EDGE for p in self.pools) else []),
        ]
        if self.rng.random() < 0.5:
            return self.rng.choice(times)
        nanos = self.rng.choice((0, self.rng.randrange(1000) * 1_000_000, self.rng.randrange(10**6) * 1000,
                                 self.rng.randrange(10**9)))
        return self.rng.randint(TIMESTAMP_MIN, TIMESTAMP_MAX), nanos

    def scalar(self, field: FieldDescriptor) -> Any:
        if field.type == FD.TYPE_ENUM:
            numbers = [v.number for v in field.enum_type.values]
            if EDGE in self.pools and self.rng.random() < 0.2:
                return self.rng.choice((0, 7, 99, -5, 2**31 - 1))  # proto3 enums are open
            return self.rng.choice(numbers)
        return self.pick(KIND_POOL[field.type])

    def fill(self, message: Message, depth: int = 0) -> Message:
        descriptor = message.DESCRIPTOR
        if self.special(message, depth):
            return message
        for field in descriptor.fields:
            if self.rng.random() >= self.presence:
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                self.fill_map(getattr(message, field.name), field, depth)
            elif field.is_repeated:
                container = getattr(message, field.name)
                for _ in range(self.rng.randint(1, 3)):
                    if field.message_type is not None:
                        if depth < self.max_depth:
                            self.fill(container.add(), depth + 1)
                    else:
                        container.append(self.scalar(field))
            elif field.message_type is not None:
                child = getattr(message, field.name)
                child.SetInParent()
                if depth < self.max_depth:
                    self.fill(child, depth + 1)
            else:
                setattr(message, field.name, self.scalar(field))
        return message

    def fill_map(self, container: Any, field: FieldDescriptor, depth: int) -> None:
        key_field, value_field = (field.message_type.fields_by_name[n] for n in ("key", "value"))
        for _ in range(self.rng.randint(1, 4)):
            key = self.scalar(key_field)
            if value_field.message_type is not None:
                entry = container[key]  # creates the entry
                if depth < self.max_depth:
                    self.fill(entry, depth + 1)
            else:
                container[key] = self.scalar(value_field)

    def special(self, message: Message, depth: int) -> bool:
        """Well-known types, filled with values they accept; False for an ordinary message."""
        name = message.DESCRIPTOR.full_name
        if name == "google.protobuf.Timestamp":
            message.seconds, message.nanos = self.time()  # type: ignore[attr-defined]
        elif name == "google.protobuf.Duration":
            seconds = self.rng.choice((0, 1, 3600, 315_576_000_000, self.rng.randrange(10**6)))
            nanos = self.rng.choice((0, 1, 1000, 500_000_000, 999_999_999, self.rng.randrange(10**9)))
            sign = self.rng.choice((1, -1))
            message.seconds, message.nanos = sign * seconds, sign * nanos  # type: ignore[attr-defined]
        elif name == "google.protobuf.FieldMask":
            paths = ["first_name", "user.last_name", "a", "unlocks_at", "x_y_z.b"]
            message.paths.extend(self.rng.sample(paths, self.rng.randint(0, 3)))  # type: ignore[attr-defined]
        elif name == "google.protobuf.Struct":
            message.update(self.json_object(depth))  # type: ignore[attr-defined]
        elif name == "google.protobuf.ListValue":
            message.extend(self.json_list(depth))  # type: ignore[attr-defined]
        elif name == "google.protobuf.Value":
            value = self.json_value(depth)
            if value is None:
                if self.rng.random() < 0.5:
                    message.null_value = 0  # type: ignore[attr-defined]
            else:
                json_format.ParseDict(value, message)
        elif name == "google.protobuf.Any":
            if self.rng.random() < 0.8:
                inner: Message = self.rng.choice(
                    (
                        timestamp_pb2.Timestamp(seconds=1_760_000_000, nanos=5000),
                        wrappers_pb2.Int64Value(value=-(2**63)),
                        duration_pb2.Duration(seconds=-3, nanos=-500),
                        struct_pb2.Struct(fields={"a": struct_pb2.Value(string_value="b")}),
                        capsules_pb2.Theme(id="t", premium=True),
                    )
                )
                message.Pack(inner)  # type: ignore[attr-defined]
        elif message.DESCRIPTOR.file.name == WRAPPERS_FILE:
            if self.rng.random() < 0.7:
                message.value = self.scalar(message.DESCRIPTOR.fields_by_name["value"])  # type: ignore[attr-defined]
        else:
            return False
        return True

    def json_value(self, depth: int) -> Any:
        choice = self.rng.randrange(7 if depth < self.max_depth else 5)
        if choice == 0:
            return None
        if choice == 1:
            return self.rng.random() < 0.5
        if choice == 2:
            return self.rng.choice((0.0, -0.0, 1.5, 1e-7, 1e21, -3.0, 2.0**53, 5e-324))
        if choice in (3, 4):
            return self.pick("string")
        if choice == 5:
            return self.json_object(depth + 1)
        return self.json_list(depth + 1)

    def json_object(self, depth: int) -> dict[str, Any]:
        return {self.pick("string"): self.json_value(depth) for _ in range(self.rng.randint(0, 3))}

    def json_list(self, depth: int) -> list[Any]:
        return [self.json_value(depth) for _ in range(self.rng.randint(0, 3))]


# 1. Every response type the gateway serves.


def served_bindings() -> list[HttpBinding]:
    return http_bindings(load_services([module for service in SERVICES for module in service.proto_modules]))


def served_output_types() -> list[type[Message]]:
    types = {b.rpc.output_descriptor.full_name: b.rpc.output_type for b in served_bindings()}
    return [types[name] for name in sorted(types)]


def test_the_served_response_types_are_all_there() -> None:
    names = {t.DESCRIPTOR.full_name for t in served_output_types()}
    assert {"capsule.auth.v1.User", "capsule.capsules.v1.ListCapsulesResponse", "google.protobuf.Empty"} <= names
    assert len(names) >= 15


@pytest.mark.parametrize("output_type", served_output_types(), ids=lambda t: t.DESCRIPTOR.full_name)
def test_every_served_response_type_is_identical(output_type: type[Message]) -> None:
    rng = random.Random(f"served:{output_type.DESCRIPTOR.full_name}")
    assert_identical(output_type())
    assert_identical(Filler(rng, [REPRESENTATIVE], presence=1.0).fill(output_type()))
    assert_identical(Filler(rng, [EDGE], presence=1.0).fill(output_type()))
    for _ in range(150):
        presence = rng.choice((0.2, 0.5, 0.9))
        assert_identical(Filler(rng, [REPRESENTATIVE, EDGE], presence).fill(output_type()))


def test_every_route_answers_through_the_prepared_encoder(caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random("routes")
    with caplog.at_level(logging.ERROR, logger="gateway.message_json"):
        for route in RouteTable(served_bindings()).routes:
            transcoder = Transcoder(route.binding, route.template)
            for _ in range(10):
                message = Filler(rng, [REPRESENTATIVE, EDGE], presence=0.7).fill(route.binding.rpc.output_type())
                assert transcoder.response_json(message) == reference(message), route.binding
    assert not caplog.records  # never through json_format's fallback


def test_response_body_answers_that_field_only() -> None:
    rpc = Rpc("capsule.capsules.v1.CapsulesService", "ListCapsules", capsules_pb2.ListCapsulesRequest,
              capsules_pb2.ListCapsulesResponse)
    bindings = [
        HttpBinding(rpc, "GET", "/v1/a", "", "capsules", 0),
        HttpBinding(rpc, "GET", "/v1/b", "", "next_page_token", 1),
    ]
    transcoders = [Transcoder(r.binding, r.template) for r in RouteTable(bindings).routes]
    page = capsules_pb2.ListCapsulesResponse(capsules=[capsules_pb2.Capsule(id="c1")], next_page_token="n")
    assert [orjson.loads(t.response_json(page)) for t in transcoders][1] == "n"
    assert orjson.loads(transcoders[0].response_json(page))[0]["id"] == "c1"
    assert transcoders[0].response_json(capsules_pb2.ListCapsulesResponse()) == b"[]"


# 2. Every field kind, on a test-only proto.


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """protos/json_kinds.proto compiled with grpc_tools and imported (it joins the default pool)."""
    from grpc_tools import protoc

    name = "json_kinds_pb2"
    if name in sys.modules:
        return sys.modules[name]
    out = tmp_path_factory.mktemp("json_kinds")
    protos = Path(__file__).parent / "protos"
    well_known = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{protos}", f"-I{well_known}", f"--python_out={out}", str(protos / "json_kinds.proto")]
    assert protoc.main(args) == 0
    spec = importlib.util.spec_from_file_location(name, out / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def every_message_type(root: Descriptor) -> Iterator[Descriptor]:
    seen: set[str] = set()
    pending = [root]
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name in seen:
            continue
        seen.add(descriptor.full_name)
        yield descriptor
        pending.extend(f.message_type for f in descriptor.fields if f.message_type is not None)


def test_the_test_proto_covers_every_field_kind(kinds: ModuleType) -> None:
    fields = [f for d in every_message_type(kinds.Kinds.DESCRIPTOR) for f in d.fields]
    assert {f.type for f in fields} >= set(KIND_POOL) | {FD.TYPE_ENUM, FD.TYPE_MESSAGE}
    names = {f.message_type.full_name for f in fields if f.message_type is not None}
    for wkt in ("Timestamp", "Duration", "FieldMask", "Empty", "Struct", "Value", "ListValue", "Any",
                "BoolValue", "Int32Value", "UInt32Value", "Int64Value", "UInt64Value", "FloatValue",
                "DoubleValue", "StringValue", "BytesValue"):
        assert f"google.protobuf.{wkt}" in names


@pytest.mark.parametrize("seed", range(8))
def test_random_messages_of_every_kind_are_identical(kinds: ModuleType, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(120):
        pools = rng.choice(([REPRESENTATIVE], [EDGE], [REPRESENTATIVE, EDGE]))
        presence = rng.choice((0.1, 0.4, 0.8, 1.0))
        assert_identical(Filler(rng, pools, presence).fill(kinds.Kinds()))


def test_each_field_alone(kinds: ModuleType) -> None:
    """One field set at a time: the key order depends on which fields are at their default."""
    rng = random.Random("alone")
    for field in kinds.Kinds.DESCRIPTOR.fields:
        for _ in range(12):
            message = Filler(rng, [EDGE, REPRESENTATIVE], presence=1.0).fill(kinds.Kinds())
            for other in kinds.Kinds.DESCRIPTOR.fields:
                if other is not field:
                    message.ClearField(other.name)
            assert_identical(message)


def test_enum_aliases_unknown_numbers_and_null(kinds: ModuleType) -> None:
    assert_identical(kinds.Kinds(f_enum=2, r_enum=[2, 7, -1, 0], o_enum=99, c_enum=-7))
    assert orjson.loads(reference(kinds.Kinds(f_enum=2)))["fEnum"] == "COLOUR_GREEN"  # the first name
    message = kinds.Kinds(w_null=0)
    assert_identical(message)
    message.w_null = 3  # unknown NullValue number: still null
    assert_identical(message)


def test_floats_and_doubles(kinds: ModuleType) -> None:
    rng = random.Random("floats")
    for _ in range(2000):
        bits = rng.getrandbits(32)
        value = struct.unpack("<f", struct.pack("<I", bits))[0]
        double = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        assert_identical(kinds.Kinds(f_float=value, f_double=double, r_float=[value], m_fixed64={bits: value}))
    for special in (-0.0, math.nan, math.inf, -math.inf):
        assert_identical(kinds.Kinds(f_float=special, f_double=special, o_float=special))


def test_keyword_field_names_are_read_with_getattr(kinds: ModuleType) -> None:
    leaf = kinds.Leaf()
    setattr(leaf, "from", "x")
    setattr(leaf, "class", False)
    assert_identical(leaf)
    assert "getattr(m, 'from')" in generated_source(kinds.Leaf.DESCRIPTOR)


def test_every_well_known_type_as_the_top_level_message(kinds: ModuleType) -> None:
    rng = random.Random("top-level")
    for descriptor in every_message_type(kinds.Kinds.DESCRIPTOR):
        cls = message_factory.GetMessageClass(descriptor)
        if descriptor.GetOptions().map_entry:
            continue
        for _ in range(20):
            assert_identical(Filler(rng, [REPRESENTATIVE, EDGE], presence=0.6).fill(cls()))


# 3. Timestamps.


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (TIMESTAMP_MIN, 0),  # 0001-01-01T00:00:00Z
        (TIMESTAMP_MIN, 1),
        (TIMESTAMP_MAX, 999_999_999),  # 9999-12-31T23:59:59.999999999Z
        (TIMESTAMP_MAX, 0),
        (0, 0),
        (0, 1_000_000),
        (0, 1_000),
        (0, 1),
        (0, 999_999_999),
        (0, 10_000_000),
        (0, 100_000),
        (0, 100),
        (-1, 0),  # 1969-12-31T23:59:59Z
        (-1, 500_000_000),
        (-86_400, 0),
        (951_782_400, 0),  # 2000-02-29
        (-2_203_891_200, 0),  # 1900-03-01
        (4_107_542_400, 0),  # 2100-03-01
        (1_760_000_000, 123_456_000),
        (1_760_000_000, 123_456_789),
    ],
)
def test_timestamp_edges(seconds: int, nanos: int) -> None:
    stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    assert timestamp_json(stamp) == stamp.ToJsonString()
    assert_identical(capsules_pb2.Capsule(unlocks_at=stamp))
    assert_identical(stamp)


def test_timestamp_edge_strings() -> None:
    low = timestamp_pb2.Timestamp(seconds=TIMESTAMP_MIN)
    high = timestamp_pb2.Timestamp(seconds=TIMESTAMP_MAX, nanos=999_999_999)
    assert timestamp_json(low) == "0001-01-01T00:00:00Z"
    assert timestamp_json(high) == "9999-12-31T23:59:59.999999999Z"
    assert timestamp_json(timestamp_pb2.Timestamp(nanos=1_000_000)) == "1970-01-01T00:00:00.001Z"
    assert timestamp_json(timestamp_pb2.Timestamp(nanos=1_000)) == "1970-01-01T00:00:00.000001Z"
    assert timestamp_json(timestamp_pb2.Timestamp(nanos=1)) == "1970-01-01T00:00:00.000000001Z"


def test_random_timestamps_over_the_whole_range() -> None:
    rng = random.Random("timestamps")
    for _ in range(20_000):  # more distinct days than the day cache keeps: it is cleared on the way
        stamp = timestamp_pb2.Timestamp(
            seconds=rng.randint(TIMESTAMP_MIN, TIMESTAMP_MAX),
            nanos=rng.choice((0, rng.randrange(1000) * 10**6, rng.randrange(10**6) * 1000, rng.randrange(10**9))),
        )
        assert timestamp_json(stamp) == stamp.ToJsonString()


# Errors: the same exception as json_format.


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except Exception as exc:
        return "error", (type(exc), str(exc))


def assert_same_failure(message: Message) -> None:
    """json_format raises on `message`; MessageEncoder raises the same exception, same text."""
    encoder = MessageEncoder(message.DESCRIPTOR)
    expected = outcome(lambda: json_format.MessageToDict(message, always_print_fields_with_no_presence=True))
    assert expected[0] == "error"
    assert outcome(lambda: encoder(message)) == expected


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(TIMESTAMP_MIN - 1, 0), (TIMESTAMP_MAX + 1, 0), (0, -1), (0, 1_000_000_000)]
)
def test_invalid_timestamps_fail_as_json_format_does(seconds: int, nanos: int) -> None:
    messages: list[Message] = [
        capsules_pb2.Capsule(unlocks_at=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)),
        timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
    ]
    for message in messages:
        assert_same_failure(message)


def test_a_non_finite_struct_number_fails_as_json_format_does(kinds: ModuleType) -> None:
    for number in (math.nan, math.inf, -math.inf):
        message = kinds.Kinds()
        message.w_value.number_value = number
        assert_same_failure(message)
        assert_same_failure(message.w_value)


def test_a_failing_encoder_answers_json_format_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    encoder = MessageEncoder(capsules_pb2.Capsule.DESCRIPTOR)

    def broken(message: Message) -> Any:
        raise RuntimeError("bug")

    encoder.fast = broken
    message = capsules_pb2.Capsule(id="c1", status=capsules_pb2.CAPSULE_STATUS_READY)
    with caplog.at_level(logging.ERROR, logger="gateway.message_json"):
        assert orjson.dumps(encoder(message)) == reference(message)
        assert orjson.dumps(encoder(message)) == reference(message)
    assert len([r for r in caplog.records if "capsule.capsules.v1.Capsule" in r.getMessage()]) == 1


def test_any_holding_an_unknown_type_fails_as_json_format_does() -> None:
    assert_same_failure(any_pb2.Any(type_url="type.googleapis.com/no.such.Type", value=b""))


def test_the_generated_source_is_readable_and_from_descriptors_only() -> None:
    source = generated_source(capsules_pb2.Capsule.DESCRIPTOR)
    assert source.startswith("# capsule.capsules.v1.Capsule\ndef encode_capsule_capsules_v1_Capsule(m):")
    assert "out['unlocksAt'] = timestamp_json(m.unlocks_at)" in source
    assert all(c in string.printable for c in source)
