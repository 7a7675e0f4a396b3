"""The request check on the hot path (issue 18): our declared field rules against protovalidate.

    python -m bench.validation [--repeat 7] [--number 0] [--loop-seconds 0.05]

Every request runs `request_checker(D)` (services/common/validation.py) before its handler. For a
few request types, each with a valid realistic request and one with several violations, this
prints µs per call of:

- parse: `FromString` of the request's bytes, what every call pays before any check (baseline);
- walk: `request_checker(D, declared=False)`, the hostile-input checks alone (NUL in any string,
  enum numbers outside the declared set), which stay whichever rule engine is chosen;
- walk + protovalidate: the walk, then protovalidate's `Validator.collect_violations` on the same
  values in a copy of the message type whose fields carry the same rules as `buf.validate` options;
- ours: `request_checker(D, declared=True)`, the walk with the rules of `(capsule.common.v1.field)`.

Each is timed with `timeit` (garbage collector off during a loop): a loop of `--number` calls
(0: as many as fill `--loop-seconds`), loops of the four interleaved, best of `--repeat`. The
messages are filled once and reused: the valid ones hold values already in their normalized
spelling, so ours never rewrites them and every call does the same work (checked). The machine is
shared: compare within one run.

The copies. Our protos do not import buf/validate/validate.proto, so the bench builds, in a
DescriptorPool of its own, `bench.protovalidate.<package>.<Message>`: the request's DescriptorProto
(descriptor_pb2) without its options, plus `(buf.validate.field)` / `(buf.validate.oneof)` options,
in a file that imports the validate.proto that the protovalidate package ships (read from its
`ViolationPb.desc().file`). Each copy is filled by parsing the request's bytes. The rules, field by
field (FieldRules → buf.validate.FieldRules):

    google.api.field_behavior REQUIRED     required: true (a string: not empty; a message: set)
      a required string with no pattern,   + string.pattern "\\S" (ours: not blank after trimming;
      format or list of its own              the same keyword /openapi.json shows)
    a string that is not required          ignore: IGNORE_IF_ZERO_VALUE (ours judges no empty one)
    min_length / max_length                string.min_len / max_len (code points, as ours)
    pattern                                string.pattern (RE2; ours are in the common subset)
    format FORMAT_UUID                     string.uuid
    format FORMAT_EMAIL                    string.email
    format FORMAT_HTTPS_URL                string.uri + string.prefix "https://"
    format FORMAT_COUNTRY_CODE             string.in: the 249 assigned ISO 3166-1 codes
    one_of                                 string.in
    single_line / no_control_characters    string.pattern "^[^\\x00-\\x1f\\x7f]*$" / the same less
                                           tab, line feed and carriage return
    minimum / maximum                      int32 (int64, uint32, ...) gte / lte
    max_items                              repeated.max_items (items: the rules above)
    (capsule.common.v1.oneof).required     (buf.validate.oneof).required

What protovalidate cannot express, so the copies only approximate it:

- Normalizing. Ours trims, lower-/upper-cases, collapses spaces or puts text in NFC before judging,
  and hands the handler the normalized value (" Ada_L " signs up as "ada_l"); protovalidate only
  judges what was sent, so " Ada_L " fails its username pattern, and the trimming, case-folding
  and NFC would stay for the handlers to do. The valid requests here are normalized already.
- The emoji list ignoring variation selectors: ours takes "❤" (no U+FE0F) as "❤️" and hands on the
  declared spelling; `in` compares exactly. (A pattern could accept the same inputs, not return the
  canonical one.)
- Blank. Ours counts a required string of spaces as missing and measures min_length after trimming
  (a password "   abc     " is too short); `required` counts only the empty string (hence the extra
  "\\S" pattern above), min_len counts the spaces. A required oneof counts a member set to "" or
  "   " as given: here the member's own format or pattern then refuses it, under its own name,
  where ours says the oneof is missing.
- Formats differ in detail (tried by hand): ours are deliberately loose patterns. An email needs a
  dot in its domain in ours, so "ada@localhost" is refused, which `email` accepts; `email` refuses
  non-ASCII ("adé@example.com", "ada@exämple.com"), IP literals ("ada@[127.0.0.1]") and malformed
  domains ("ada@example..com", "ada@-example.com"), which ours accepts. `uri` + prefix accepts
  "https://" and "https:///path" (no host), which ours refuses, and refuses a raw non-ASCII path
  ("https://example.com/ä"), a bad percent escape ("/%zz") or a second "#", which ours accepts.
- Messages: ours are our sentences ("must be 3 to 30 characters among a-z, ..."); protovalidate's
  are its own ("does not match regex pattern `^[a-z0-9_.]{3,30}$`") unless each rule is rewritten
  as CEL.

The walk's own checks (NUL, enum numbers) are not given to protovalidate: they run in both columns.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import timeit
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from capsule.auth.v1 import auth_pb2
from capsule.capsules.v1 import capsules_pb2, replies_pb2
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    field_mask_pb2,
    message_factory,
    timestamp_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal import api_implementation
from google.protobuf.message import Message

from services.common import field_rules
from services.common.countries import ISO_3166_ALPHA2
from services.common.validation import request_checker

COPY_PACKAGE = "bench.protovalidate"
SINGLE_LINE = r"^[^\x00-\x1f\x7f]*$"
NO_CONTROLS = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
NOT_BLANK = r"\S"
# buf.validate.FieldRules' field for each integer type's rules.
_INTEGER_RULES = {
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}
Rules = field_rules.Rules

UUID_A = "0192f5e0-7c1a-7b3e-9d4f-1a2b3c4d5e6f"
UUID_B = "0193a0c4-7a7e-7cc1-9c51-5f0d2b8e1a00"
LETTER = (
    "Dear Ada,\n\nBy the time you open this, the engine will either work or be a very expensive "
    "paperweight. Either way, I wanted you to know how much the late nights meant: the tea gone "
    "cold, the notes in the margins, the arguments about notation that you always won.\n\n"
    "Happy birthday. Open the drawer on the left when you have read this.\n\nCharles"
)


@dataclass(frozen=True)
class Case:
    """One request message, valid and with several violations."""

    name: str
    valid: Message
    invalid: Message


def cases() -> list[Case]:
    unlocks_at = timestamp_pb2.Timestamp(seconds=1_900_000_000)
    return [
        Case(
            "CreateCapsuleRequest",
            capsules_pb2.CreateCapsuleRequest(
                recipient_id=UUID_A,
                title="Open on your birthday",
                body=LETTER,
                theme_id=UUID_B,
                unlocks_at=unlocks_at,
                anonymous=True,
                reveal_delay_seconds=21_600,
                disappear_after_open_seconds=3_600,
            ),
            capsules_pb2.CreateCapsuleRequest(
                recipient_id="not-a-uuid",
                title="two\nlines",
                theme_id="sunset",
                reveal_delay_seconds=300_000,
                disappear_after_open_seconds=0,
            ),  # also no body, no unlocks_at
        ),
        Case(
            "SignUpRequest",
            auth_pb2.SignUpRequest(
                email="ada.lovelace@example.com",
                username="ada_lovelace",
                password="correct horse battery staple",
                first_name="Ada",
                last_name="Lovelace",
                avatar_url="https://cdn.example.com/avatars/ada.png",
                country="GB",
            ),
            auth_pb2.SignUpRequest(
                email="ada.example.com",
                username="a!",
                password="short",
                first_name="Ada\tAugusta",
                avatar_url="http://example.com/ada.png",
                country="XX",
            ),
        ),
        Case(
            "CreateReplyRequest",
            replies_pb2.CreateReplyRequest(capsule_id=UUID_A, text="Thank you, it made my day!", emoji="❤️"),
            replies_pb2.CreateReplyRequest(capsule_id="42", text="so " * 25, emoji="👍"),
        ),
        Case(
            "LogInRequest",
            auth_pb2.LogInRequest(username="ada_lovelace", password="correct horse battery staple"),
            auth_pb2.LogInRequest(),  # neither email nor username, no password
        ),
    ]


# --- the protovalidate copies ------------------------------------------------------------------


class Copies:
    """The request types again, in a pool of their own, with `buf.validate` rules on their fields."""

    def __init__(self, validate_file: bytes, descriptors: Iterable[Descriptor]) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        self._files: set[str] = set()
        for module in (descriptor_pb2, duration_pb2, field_mask_pb2, timestamp_pb2):  # validate.proto's imports
            self._add_file(module.DESCRIPTOR)
        self.pool.AddSerializedFile(validate_file)
        # The pool's own classes, so that the options carry extensions of this pool.
        self.file_proto = message_factory.GetMessageClass(
            self.pool.FindMessageTypeByName("google.protobuf.FileDescriptorProto")
        )
        self.field_ext = self.pool.FindExtensionByName("buf.validate.field")
        self.oneof_ext = self.pool.FindExtensionByName("buf.validate.oneof")
        self.ignore_if_zero = (
            self.pool.FindEnumTypeByName("buf.validate.Ignore").values_by_name["IGNORE_IF_ZERO_VALUE"].number
        )
        self.classes: dict[str, type[Message]] = {}
        for descriptor in descriptors:
            self.classes[descriptor.full_name] = self._copy(descriptor)

    def _add_file(self, file: Any) -> None:
        if file.name not in self._files:
            self.pool.AddSerializedFile(file.serialized_pb)
            self._files.add(file.name)

    def of(self, message: Message) -> Message:
        """A copy of `message`, in the copied type."""
        return self.classes[message.DESCRIPTOR.full_name].FromString(message.SerializeToString())

    def _copy(self, descriptor: Descriptor) -> type[Message]:
        proto = descriptor_pb2.DescriptorProto()
        descriptor.CopyToProto(proto)
        if proto.nested_type or proto.enum_type:
            raise NotImplementedError(f"{descriptor.full_name}: nested types are not copied")
        imports = {"buf/validate/validate.proto"}
        for field in descriptor.fields:
            target = field.message_type or field.enum_type
            if target is not None:
                if not target.full_name.startswith("google.protobuf."):
                    raise NotImplementedError(f"{descriptor.full_name}.{field.name}: only well-known types are copied")
                self._add_file(target.file)
                imports.add(target.file.name)
        package = f"{COPY_PACKAGE}.{descriptor.file.package}"
        file = descriptor_pb2.FileDescriptorProto(
            name=f"bench/protovalidate/{descriptor.full_name}.proto",
            package=package,
            syntax="proto3",
            dependency=sorted(imports),
        )
        file.message_type.add().CopyFrom(proto)
        own = self.file_proto.FromString(file.SerializeToString())
        message = own.message_type[0]
        message.ClearField("options")
        for field_proto, field in zip(message.field, descriptor.fields, strict=True):
            field_proto.ClearField("options")
            rules = self._field_rules(field)
            if rules is not None:
                field_proto.options.Extensions[self.field_ext].CopyFrom(rules)
        required = set(field_rules.required_oneofs(descriptor))
        for oneof_proto, oneof in zip(message.oneof_decl, descriptor.oneofs, strict=True):
            oneof_proto.ClearField("options")
            if tuple(f.name for f in oneof.fields) in required:
                oneof_proto.options.Extensions[self.oneof_ext].required = True
        self.pool.AddSerializedFile(own.SerializeToString())
        copied = self.pool.FindMessageTypeByName(f"{package}.{descriptor.name}")
        return message_factory.GetMessageClass(copied)

    def _field_rules(self, field: FieldDescriptor) -> Any:
        """buf.validate.FieldRules of this pool mirroring the field's declared rules (None: none)."""
        rules_class = message_factory.GetMessageClass(self.field_ext.message_type)  # the pool's FieldRules
        out = rules_class()
        if field.is_repeated:
            limit = field_rules.max_items(field)
            if limit:
                out.repeated.max_items = limit
            items = self._value_rules(field, rules_class(), required=False)
            if items is not None:
                out.repeated.items.CopyFrom(items)
            return out if out.ByteSize() else None
        return self._value_rules(field, out, required=field_rules.is_required(field))

    def _value_rules(self, field: FieldDescriptor, out: Any, *, required: bool) -> Any:
        rules = field_rules.declared(field)
        if required:
            out.required = True
        if field.type == FieldDescriptor.TYPE_STRING:
            patterns = []
            if rules is None:
                if required:
                    patterns.append(NOT_BLANK)
            else:
                string = out.string
                if rules.min_length:
                    string.min_len = rules.min_length
                if rules.HasField("max_length"):
                    string.max_len = rules.max_length
                listed = getattr(string, "in")  # `in` is a Python keyword
                if rules.one_of:
                    listed.extend(rules.one_of)
                elif rules.format == Rules.FORMAT_UUID:
                    string.uuid = True
                elif rules.format == Rules.FORMAT_EMAIL:
                    string.email = True
                elif rules.format == Rules.FORMAT_HTTPS_URL:
                    string.uri = True
                    string.prefix = "https://"
                elif rules.format == Rules.FORMAT_COUNTRY_CODE:
                    listed.extend(sorted(ISO_3166_ALPHA2))
                elif rules.pattern:
                    patterns.append(rules.pattern)
                if rules.single_line:
                    patterns.append(SINGLE_LINE)
                elif rules.no_control_characters:
                    patterns.append(NO_CONTROLS)
                if required and not (rules.one_of or rules.format or patterns):
                    patterns.append(NOT_BLANK)
                if not required:
                    out.ignore = self.ignore_if_zero
            if len(patterns) > 1:
                raise NotImplementedError(f"{field.full_name}: two patterns (would need a CEL rule)")
            if patterns:
                out.string.pattern = patterns[0]
        elif rules is not None and field.type in _INTEGER_RULES:
            integer = getattr(out, _INTEGER_RULES[field.type])
            if rules.HasField("minimum"):
                integer.gte = rules.minimum
            if rules.HasField("maximum"):
                integer.lte = rules.maximum
        return out if out.ByteSize() else None


# --- timing --------------------------------------------------------------------------------------


def calls_per_loop(timer: timeit.Timer, seconds: float) -> int:
    """How many calls fill about `seconds` (timeit's autorange, to a shorter target)."""
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= seconds / 4:
            return max(1, int(number * seconds / elapsed))
        number *= 4


def best_us(timers: dict[str, timeit.Timer], number: int, repeat: int, seconds: float) -> dict[str, float]:
    """µs per call of each timer: loops interleaved, best of `repeat`."""
    numbers = {key: number or calls_per_loop(timer, seconds) for key, timer in timers.items()}
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(repeat):
        for key, timer in timers.items():
            best[key] = min(best[key], timer.timeit(numbers[key]) / numbers[key] * 1e6)
    return best


@dataclass
class Row:
    name: str
    kind: str  # "valid" or "N violations"
    size: int
    us: dict[str, float]
    ours: list[str]
    theirs: list[str]


COLUMNS = ("parse", "walk", "walk+pv", "ours")


def violation_path(violation: Any, oneofs: dict[str, str]) -> str:
    """A protovalidate violation's field path in our spelling (a oneof: its first field's name)."""
    path = ".".join(element.field_name for element in violation.proto.field.elements)
    return oneofs.get(path, path)


def measure(
    case: Case,
    message: Message,
    copies: Copies,
    validator: Any,
    args: argparse.Namespace,
    kind: str,
) -> Row:
    descriptor = message.DESCRIPTOR
    walk = request_checker(descriptor, declared=False) or (lambda _m: [])
    ours = request_checker(descriptor, declared=True) or (lambda _m: [])
    data = message.SerializeToString()
    copy = copies.of(message)
    oneofs = {o.name: o.fields[0].name for o in descriptor.oneofs}
    our_paths = [path for path, _ in ours(message)]
    their_paths = [violation_path(v, oneofs) for v in validator.collect_violations(copy)]
    if message.SerializeToString() != data:
        raise SystemExit(f"{case.name} ({kind}): our check rewrote the request; use normalized values")
    if walk(message):
        raise SystemExit(f"{case.name} ({kind}): the walk alone found something: {walk(message)}")
    if kind == "valid" and (our_paths or their_paths):
        raise SystemExit(
            f"{case.name}: the valid request has violations: ours {our_paths}, protovalidate {their_paths}"
        )
    if sorted(our_paths) != sorted(their_paths):
        raise SystemExit(f"{case.name}: the rules differ: ours {our_paths}, protovalidate {their_paths}")
    scope = {
        "parse": type(message).FromString,
        "data": data,
        "walk": walk,
        "ours": ours,
        "pv": validator.collect_violations,
        "m": message,
        "c": copy,
    }
    timers = {
        "parse": timeit.Timer("parse(data)", globals=scope),
        "walk": timeit.Timer("walk(m)", globals=scope),
        "walk+pv": timeit.Timer("walk(m); pv(c)", globals=scope),
        "ours": timeit.Timer("ours(m)", globals=scope),
    }
    us = best_us(timers, args.number, args.repeat, args.loop_seconds)
    label = kind if kind == "valid" else f"{len(our_paths)} violations"
    return Row(case.name, label, len(data), us, our_paths, their_paths)


def render(rows: list[Row]) -> str:
    lines = [
        f"{'request':<22}{'case':<15}{'bytes':>6}{'parse':>9}{'walk':>9}{'walk+pv':>10}{'ours':>9}"
        f"{'pv rules':>10}{'our rules':>11}{'walk+pv/ours':>14}",
    ]
    for row in rows:
        us = row.us
        lines.append(
            f"{row.name:<22}{row.kind:<15}{row.size:>6}{us['parse']:>9.2f}{us['walk']:>9.2f}"
            f"{us['walk+pv']:>10.2f}{us['ours']:>9.2f}{us['walk+pv'] - us['walk']:>10.2f}"
            f"{us['ours'] - us['walk']:>11.2f}{us['walk+pv'] / us['ours']:>13.2f}x"
        )
    return "\n".join(lines)


def versions() -> str:
    names = ("protobuf", "protovalidate", "protobuf-py", "grpcio")
    found = ", ".join(f"{name} {metadata.version(name)}" for name in names)
    return f"Python {platform.python_version()}, {found} (google.protobuf backend: {api_implementation.Type()})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.validation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7, help="loops per column; the best is kept (7)")
    parser.add_argument("--number", type=int, default=0, help="calls per loop; 0: as many as fill --loop-seconds (0)")
    parser.add_argument("--loop-seconds", type=float, default=0.05, help="length of one loop with --number 0 (0.05)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.number < 0 or args.loop_seconds <= 0:
        parser.error("--repeat must be at least 1, --number at least 0 and --loop-seconds above 0")
    return args


def startup_ms(step: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = step()
    return result, (time.perf_counter() - started) * 1e3


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    measured = cases()
    descriptors = [case.valid.DESCRIPTOR for case in measured]

    # What each side costs once per process, before its first call.
    _, ours_ms = startup_ms(lambda: [request_checker(d, declared=True) for d in descriptors])
    protovalidate, import_ms = startup_ms(lambda: importlib.import_module("protovalidate"))
    validate_file = protovalidate.ViolationPb.desc().file.proto.to_binary()
    copies, copies_ms = startup_ms(lambda: Copies(validate_file, descriptors))
    validator, validator_ms = startup_ms(protovalidate.Validator)
    first = [copies.of(case.valid) for case in measured]
    _, compile_ms = startup_ms(lambda: [validator.collect_violations(m) for m in first])

    rows = []
    for case in measured:
        rows.append(measure(case, case.valid, copies, validator, args, "valid"))
        rows.append(measure(case, case.invalid, copies, validator, args, "invalid"))
    load_after = os.getloadavg()

    how = f"{args.number} calls" if args.number else f"~{args.loop_seconds:g} s"
    print(
        f"µs per call, best of {args.repeat} interleaved loops of {how} each (timeit, gc off); "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, {os.cpu_count()} cores"
    )
    print(
        "parse: FromString (baseline); walk: request_checker(declared=False); walk+pv: the walk + "
        "protovalidate's collect_violations on the copy; ours: request_checker(declared=True)\n"
        "pv rules = walk+pv - walk; our rules = ours - walk\n"
    )
    print(render(rows))
    print("\nviolations (the same fields on both sides, checked):")
    for row in rows:
        if row.ours:
            print(f"  {row.name}: {', '.join(row.ours)}")
    print(
        f"\nonce per process: our rules compiled for the {len(descriptors)} types {ours_ms:.1f} ms; "
        f"import protovalidate {import_ms:.0f} ms, the copies with buf.validate rules {copies_ms:.1f} ms, "
        f"Validator() {validator_ms:.1f} ms, first validation of each type (its rules compiled) {compile_ms:.1f} ms"
    )
    print(versions())
    return 0


if __name__ == "__main__":
    sys.exit(main())
