"""The field rules the protos declare (`(capsule.common.v1.field)`, options.proto), compiled once
per field: how a value is normalized, what it must hold, and the same rules as JSON Schema keywords
for `/openapi.json`. The services run them in the request walk (services/common/validation.py)
before any handler, so a rule lives in the proto and nowhere else.

Why an option of our own rather than protovalidate (`python -m bench.validation`, µs per call on
the 2-core machine): on valid requests the two cost the same (2-3 µs over the walk's 1-2), on a
request with several violations protovalidate 2.1 costs 4-7x ours (it builds a violation object
each, ~2.5 µs); it brings a second protobuf runtime (protobuf-py) and 40+ ms of import; and it
cannot normalize (trim, lower-case, NFC, the emoji spelling) and hand the handler the normalized
value, so each service would keep those rules, which is what this module removes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from capsule.common.v1 import options_pb2
from google.api import field_behavior_pb2
from google.protobuf.descriptor import FieldDescriptor

from services.common.countries import ISO_3166_ALPHA2

Rules = options_pb2.FieldRules
FD = FieldDescriptor

# The 36-character text form, either case (what the services issue and JSON Schema's "uuid" means).
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# Deliberately loose (the only real check of an address is a mail it receives): one @, a dot in
# the domain, no whitespace or control characters.
EMAIL_PATTERN = r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f.]+$"
HTTPS_URL_PATTERN = r"^https://[^/?#\s\x00-\x1f]+([/?#][^\s\x00-\x1f]*)?$"
# C0 controls and DEL; the second keeps tab, line feed and carriage return (text with lines). One
# character class each, read by the services (re) and by JSON Schema (ECMA-262) alike.
CONTROLS = r"\x00-\x1f\x7f"
CONTROLS_BUT_LAYOUT = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"
# Emoji presentation selectors: "❤" and "❤️" are the same heart.
_SELECTORS = {0xFE0E: None, 0xFE0F: None}

_JSON_FORMATS = {Rules.FORMAT_UUID: "uuid", Rules.FORMAT_EMAIL: "email", Rules.FORMAT_HTTPS_URL: "uri"}
_FORMATS: dict[int, tuple[str, str]] = {  # format → (pattern, what a violation says)
    Rules.FORMAT_UUID: (UUID_PATTERN, "must be a UUID"),
    Rules.FORMAT_EMAIL: (EMAIL_PATTERN, "must be an email address such as name@example.com"),
    Rules.FORMAT_HTTPS_URL: (HTTPS_URL_PATTERN, "must be an https URL"),
}
# A country code is a closed list: the assigned ones.
COUNTRY_TEXT = "must be an ISO 3166-1 alpha-2 country code such as FR or US"


def _collapse(value: str) -> str:
    return " ".join(value.split())


def _as_written(value: str) -> str:
    return value


_NORMALIZERS: dict[int, Callable[[str], str]] = {
    Rules.NORMALIZE_UNSPECIFIED: str.strip,
    Rules.NORMALIZE_AS_WRITTEN: _as_written,
    Rules.NORMALIZE_LOWER: lambda value: value.strip().lower(),
    Rules.NORMALIZE_UPPER: lambda value: value.strip().upper(),
    Rules.NORMALIZE_COLLAPSE_SPACES: _collapse,
    Rules.NORMALIZE_NFC: lambda value: unicodedata.normalize("NFC", value.strip()),
}


def declared(field: FieldDescriptor) -> Rules | None:
    """The field's declared rules, or None."""
    options = field.GetOptions()
    return options.Extensions[options_pb2.field] if options.HasExtension(options_pb2.field) else None


def is_required(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.REQUIRED in field.GetOptions().Extensions[field_behavior_pb2.field_behavior]


def length_text(minimum: int, maximum: int | None) -> str:
    if maximum is None:
        return f"must be at least {minimum} characters"
    if minimum > 1:
        return f"must be {minimum} to {maximum} characters"
    return f"must be at most {maximum} characters"


@dataclass(frozen=True, slots=True)
class StringRule:
    """One string field's rules, compiled. `check` returns the normalized value and what is wrong
    with it (None: nothing)."""

    normalize: Callable[[str], str]
    required: bool
    min_length: int
    max_length: int | None
    pattern: re.Pattern[str] | None
    pattern_text: str
    choices: dict[str, str] | None  # spelling without selectors → the declared spelling
    choices_text: str
    controls: re.Pattern[str] | None

    def check(self, raw: str) -> tuple[str, str | None]:
        value = self.normalize(raw)
        if not value.strip():
            # Blank: only whether the field must be set matters (an optional one may be empty).
            return value, "is required" if self.required else None
        if (self.min_length and len(value.strip()) < self.min_length) or (
            self.max_length is not None and len(value) > self.max_length
        ):
            return value, length_text(self.min_length, self.max_length)
        if self.controls is not None and self.controls.search(value):
            return value, "must not contain control characters"
        if self.choices is not None:
            canonical = self.choices.get(value.translate(_SELECTORS))
            if canonical is None:
                return value, self.choices_text
            return canonical, None
        if self.pattern is not None and not self.pattern.search(value):
            return value, self.pattern_text
        return value, None


@dataclass(frozen=True, slots=True)
class IntegerRule:
    minimum: int | None
    maximum: int | None
    text: str

    def check(self, value: int) -> str | None:
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            return self.text
        return None


def string_rule(field: FieldDescriptor) -> StringRule | None:
    """The compiled rules of a string field (None: it declares none and is not required)."""
    rules = declared(field)
    if rules is None:
        # Only whether it is blank is judged; kept as sent (a password is not trimmed).
        required = is_required(field) and not field.is_repeated
        return StringRule(_as_written, True, 0, None, None, "", None, "", None) if required else None
    # An item of a list is never optional: a blank one names nothing.
    required = is_required(field) or field.is_repeated
    pattern_source, pattern_text = _FORMATS.get(rules.format, (rules.pattern, "must match " + rules.pattern))
    choices, choices_text = None, "must be one of " + ", ".join(rules.one_of)
    if rules.one_of:
        choices = {choice.translate(_SELECTORS): choice for choice in rules.one_of}
    elif rules.format == Rules.FORMAT_COUNTRY_CODE:
        choices, choices_text = {code: code for code in ISO_3166_ALPHA2}, COUNTRY_TEXT
    controls = None
    if rules.single_line:
        controls = re.compile(f"[{CONTROLS}]")
    elif rules.no_control_characters:
        controls = re.compile(f"[{CONTROLS_BUT_LAYOUT}]")
    return StringRule(
        normalize=_NORMALIZERS[rules.normalize],
        required=required,
        min_length=rules.min_length,
        max_length=rules.max_length if rules.HasField("max_length") else None,
        pattern=re.compile(pattern_source) if pattern_source else None,
        pattern_text=rules.message or pattern_text,
        choices=choices,
        choices_text=rules.message or choices_text,
        controls=controls,
    )


def integer_rule(field: FieldDescriptor) -> IntegerRule | None:
    rules = declared(field)
    if rules is None or not (rules.HasField("minimum") or rules.HasField("maximum")):
        return None
    minimum = rules.minimum if rules.HasField("minimum") else None
    maximum = rules.maximum if rules.HasField("maximum") else None
    if rules.message:
        text = rules.message
    elif maximum is None:
        text = f"must be {minimum} or more"
    elif minimum is None:
        text = f"must be at most {maximum}"
    else:
        text = f"must be {minimum} to {maximum}"
    return IntegerRule(minimum, maximum, text)


def required_oneofs(descriptor: Any) -> list[tuple[str, ...]]:
    """The names of the fields of each oneof of `descriptor` that must have one of them set."""
    found = []
    for oneof in descriptor.oneofs:
        options = oneof.GetOptions()
        if options.HasExtension(options_pb2.oneof) and options.Extensions[options_pb2.oneof].required:
            found.append(tuple(field.name for field in oneof.fields))
    return found


def exactly_one_groups(descriptor: Any) -> list[tuple[str, ...]]:
    """The groups of fields of `descriptor` of which exactly one must be set (MessageRules)."""
    options = descriptor.GetOptions()
    if not options.HasExtension(options_pb2.message):
        return []
    groups = [tuple(group.fields) for group in options.Extensions[options_pb2.message].exactly_one]
    for group in groups:
        unknown = [name for name in group if name not in descriptor.fields_by_name]
        if unknown:
            raise ValueError(f"{descriptor.full_name} (capsule.common.v1.message): no fields {unknown}")
    return groups


def max_items(field: FieldDescriptor) -> int:
    rules = declared(field)
    return rules.max_items if rules is not None and field.is_repeated else 0


# --- the same rules as JSON Schema (gateway/openapi.py) ------------------------------------------

# A character str.strip() keeps, in the subset of regular expressions Python and ECMA-262 read
# alike: ECMA's \s lacks the separators U+001C-U+001F and U+0085 that Python strips (and has U+FEFF,
# which Python keeps: a value of BOMs alone reads as blank here, stricter than the service).
_KEPT = r"[^\s\x1c-\x1f\x85]"
NOT_BLANK_PATTERN = _KEPT


def _trimmed_length_pattern(minimum: int) -> str:
    """Matches a string at least `minimum` characters long once trimmed (minimum >= 2): two kept
    characters that far apart."""
    return f"{_KEPT}[\\s\\S]{{{minimum - 2},}}{_KEPT}"


def json_schema_keywords(field: FieldDescriptor) -> dict[str, Any]:
    """JSON Schema keywords for one value of `field` (an item, for a repeated field): what the
    services accept, in the normalized spelling they keep."""
    rules = declared(field)
    required = is_required(field) and field.type == FD.TYPE_STRING and not field.is_repeated
    if rules is None:
        return {"minLength": 1, "pattern": NOT_BLANK_PATTERN} if required else {}
    keywords: dict[str, Any] = {}
    if field.type == FD.TYPE_STRING:
        if required:  # not blank
            keywords["minLength"] = 1
        if rules.min_length:
            keywords["minLength"] = rules.min_length
        if rules.HasField("max_length"):
            keywords["maxLength"] = rules.max_length
        if rules.one_of:
            keywords["enum"] = list(rules.one_of)
        elif rules.format == Rules.FORMAT_COUNTRY_CODE:
            keywords["enum"] = sorted(ISO_3166_ALPHA2)
        elif rules.format in _FORMATS:
            keywords["pattern"] = _FORMATS[rules.format][0]
            keywords["format"] = _JSON_FORMATS[rules.format]
        elif rules.pattern:
            keywords["pattern"] = rules.pattern
        if rules.single_line or rules.no_control_characters:
            _add_pattern(keywords, f"^[^{CONTROLS if rules.single_line else CONTROLS_BUT_LAYOUT}]*$")
        if "enum" not in keywords:
            # Lengths are judged on the trimmed value (StringRule.check), blankness too.
            if rules.min_length > 1:
                _add_pattern(keywords, _trimmed_length_pattern(rules.min_length))
            elif required and _may_be_blank(keywords):
                _add_pattern(keywords, NOT_BLANK_PATTERN)
    if rules.HasField("minimum"):
        keywords["minimum"] = rules.minimum
    if rules.HasField("maximum"):
        keywords["maximum"] = rules.maximum
    if rules.example:
        keywords["examples"] = [_typed(field, rules.example)]
    if rules.message:
        keywords["description"] = rules.message[0].upper() + rules.message[1:] + "."
    return keywords


def _may_be_blank(keywords: dict[str, Any]) -> bool:
    """Whether every pattern so far lets a blank value through (probed with one space)."""
    patterns = [keywords.get("pattern"), *(part["pattern"] for part in keywords.get("allOf", ()))]
    return all(re.search(pattern, " ") for pattern in patterns if pattern is not None)


def _add_pattern(keywords: dict[str, Any], pattern: str) -> None:
    """One more pattern the value must match (JSON Schema has one `pattern` per schema)."""
    if "pattern" not in keywords:
        keywords["pattern"] = pattern
    else:
        keywords.setdefault("allOf", []).append({"pattern": pattern})


def array_keywords(field: FieldDescriptor) -> dict[str, Any]:
    limit = max_items(field)
    return {"maxItems": limit} if limit else {}


def _typed(field: FieldDescriptor, example: str) -> Any:
    if field.cpp_type in (FD.CPPTYPE_INT32, FD.CPPTYPE_UINT32):
        return int(example)
    return example
