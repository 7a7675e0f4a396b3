"""Path templates of `google.api.http` rules, parsed once and matched against request paths.

The grammar (google/api/http.proto):

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

`{id}` is short for `{id=*}`: exactly one non-empty segment. A request path is matched on its raw
(still percent-encoded) form, split into segments, with the custom verb split off the last
segment first: so `{id}` never swallows `:accept`, and a `:` that belongs to a value must be
sent as `%3A`. Variable values are percent-decoded; a multi-segment value keeps `%2F` encoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import NoReturn
from urllib.parse import unquote

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERAL = re.compile(r"[^/{}*:=]+")


class TemplateError(ValueError):
    """A path template that does not follow the grammar."""


class SegmentKind(Enum):
    LITERAL = "literal"
    STAR = "*"
    DOUBLE_STAR = "**"


@dataclass(frozen=True)
class Segment:
    kind: SegmentKind
    text: str = ""


@dataclass(frozen=True)
class Variable:
    """A `{field.path=...}` capture over segments[start:end] (end None: to the end of the path)."""

    field_path: str  # dotted proto field names, as written in the template: user.id
    start: int
    end: int | None
    pattern: str  # the segments it matches, as written: "*", "shelves/*", "**"

    @property
    def single_segment(self) -> bool:
        return self.end is not None and self.end - self.start == 1

    def decode(self, raw: str) -> str:
        """The value of a matched variable, percent-decoded as UTF-8 (UnicodeDecodeError if it is
        not UTF-8). A multi-segment value keeps `%2F` encoded, so its `/`s stay unambiguous."""
        if not self.single_segment:
            raw = raw.replace("%2F", "%252F").replace("%2f", "%252f")
        return unquote(raw, errors="strict")


@dataclass(frozen=True)
class PathTemplate:
    source: str
    segments: tuple[Segment, ...]
    variables: tuple[Variable, ...]
    verb: str  # "" when the template has no custom verb

    @property
    def open_ended(self) -> bool:
        """Whether the last segment is `**` (matches zero or more segments)."""
        return bool(self.segments) and self.segments[-1].kind is SegmentKind.DOUBLE_STAR

    @property
    def shape(self) -> str:
        """What the template matches, whatever its variables are called: `v1/types/*:accept`."""
        path = "/".join(s.text if s.kind is SegmentKind.LITERAL else s.kind.value for s in self.segments)
        return f"{path}:{self.verb}"

    @property
    def specificity(self) -> tuple[int, ...]:
        """Sort key: among templates matching the same path, literals win over wildcards."""
        return tuple(0 if s.kind is SegmentKind.LITERAL else 1 for s in self.segments)

    def match(self, raw_segments: list[str]) -> dict[str, str] | None:
        """Raw variable values (field path → text still percent-encoded, see Variable.decode) if
        the segments match, else None."""
        segments = self.segments
        if self.open_ended:
            if len(raw_segments) < len(segments) - 1:
                return None
        elif len(raw_segments) != len(segments):
            return None
        for segment, raw in zip(segments, raw_segments, strict=False):
            if segment.kind is SegmentKind.LITERAL:
                if raw != segment.text:
                    return None
            elif segment.kind is SegmentKind.STAR and not raw:
                return None
        values: dict[str, str] = {}
        for variable in self.variables:
            end = len(raw_segments) if variable.end is None else variable.end
            values[variable.field_path] = "/".join(raw_segments[variable.start : end])
        return values

    def openapi_path(self) -> str:
        """The path in OpenAPI syntax: variables as `{field.path}`, the custom verb kept literally."""
        parts: list[str] = []
        index = 0
        variables = {v.start: v for v in self.variables}
        while index < len(self.segments):
            variable = variables.get(index)
            if variable is not None:
                parts.append("{" + variable.field_path + "}")
                index = len(self.segments) if variable.end is None else variable.end
            else:
                segment = self.segments[index]
                parts.append(segment.text if segment.kind is SegmentKind.LITERAL else segment.kind.value)
                index += 1
        path = "/" + "/".join(parts)
        return f"{path}:{self.verb}" if self.verb else path


def split_request_path(raw_path: str) -> tuple[list[str], str]:
    """`/v1/connection-requests/abc:accept` → (["v1", "connection-requests", "abc"], "accept")."""
    segments = raw_path[1:].split("/") if raw_path.startswith("/") else raw_path.split("/")
    last, colon, verb = segments[-1].rpartition(":")
    if colon:
        segments[-1] = last
        return segments, verb
    return segments, ""


def parse_template(source: str) -> PathTemplate:
    return _Parser(source).parse()


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.pos = 0
        self.segments: list[Segment] = []
        self.variables: list[Variable] = []

    def parse(self) -> PathTemplate:
        if not self.source.startswith("/"):
            self.fail("must start with '/'")
        self.pos = 1
        self.parse_segments(inside_variable=False)
        verb = ""
        if self.peek() == ":":
            self.pos += 1
            verb = self.take(_LITERAL, "a custom verb after ':'")
        if self.pos != len(self.source):
            self.fail(f"unexpected {self.source[self.pos]!r}")
        for index, segment in enumerate(self.segments):
            if segment.kind is SegmentKind.DOUBLE_STAR and index != len(self.segments) - 1:
                self.fail("'**' must be the last segment")
        return PathTemplate(self.source, tuple(self.segments), tuple(self.variables), verb)

    def parse_segments(self, *, inside_variable: bool) -> None:
        while True:
            self.parse_segment(inside_variable=inside_variable)
            if self.peek() != "/":
                return
            self.pos += 1

    def parse_segment(self, *, inside_variable: bool) -> None:
        if self.source.startswith("**", self.pos):
            self.pos += 2
            self.segments.append(Segment(SegmentKind.DOUBLE_STAR))
        elif self.peek() == "*":
            self.pos += 1
            self.segments.append(Segment(SegmentKind.STAR))
        elif self.peek() == "{":
            if inside_variable:
                self.fail("variables cannot nest")
            self.parse_variable()
        else:
            self.segments.append(Segment(SegmentKind.LITERAL, self.take(_LITERAL, "a path segment")))

    def parse_variable(self) -> None:
        self.pos += 1  # "{"
        names = [self.take(_IDENT, "a field name")]
        while self.peek() == ".":
            self.pos += 1
            names.append(self.take(_IDENT, "a field name"))
        start = len(self.segments)
        pattern_start = self.pos + 1
        if self.peek() == "=":
            self.pos += 1
            self.parse_segments(inside_variable=True)
            pattern = self.source[pattern_start : self.pos]
        else:
            self.segments.append(Segment(SegmentKind.STAR))
            pattern = "*"
        if self.peek() != "}":
            self.fail("expected '}'")
        self.pos += 1
        field_path = ".".join(names)
        if any(v.field_path == field_path for v in self.variables):
            self.fail(f"field {field_path!r} is bound twice")
        open_ended = self.segments[-1].kind is SegmentKind.DOUBLE_STAR
        self.variables.append(Variable(field_path, start, None if open_ended else len(self.segments), pattern))

    def peek(self) -> str:
        return self.source[self.pos] if self.pos < len(self.source) else ""

    def take(self, token: re.Pattern[str], what: str) -> str:
        match = token.match(self.source, self.pos)
        if match is None:
            self.fail(f"expected {what}")
        self.pos = match.end()
        return match.group(0)

    def fail(self, message: str) -> NoReturn:
        raise TemplateError(f"path template {self.source!r}, at {self.pos}: {message}")
