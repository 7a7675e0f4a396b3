"""HTTP request ↔ gRPC message, for one binding, as grpc-gateway does it.

A request message is built from, in this order (later sources win on the same field):
  1. the body: `body: "*"` merges the JSON object into the message, `body: "field"` sets that
     field from the JSON value, no body option means the route takes no body;
  2. the path variables (`{username}`, `{user.id}`);
  3. query parameters, for every field not bound by the path or the body: lowerCamelCase or
     snake_case names, dots for nesting, a repeated key for each element of a repeated field.
A PATCH whose body is one field and whose message has a FieldMask `update_mask` the client left
empty gets the mask from the body's top-level keys (grpc-gateway's convention).

Everything about a binding's fields is resolved once, when its `Transcoder` is built; bad input
collects every field violation and raises one 400 problem. The response's JSON encoder is
prepared then too (gateway/message_json.py: the same bytes as json_format, several times faster).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Final

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.descriptors import DescriptorError, HttpBinding
from gateway.fields import (
    FIELD_MASK,
    Violations,
    is_nested_message,
    merge_json_object,
    message_fields,
    prepare,
    set_json_field,
    set_text_field,
    settable_from_text,
)
from gateway.message_json import MessageEncoder
from gateway.naming import lower_camel
from gateway.problems import FieldViolation, Problem
from gateway.templates import PathTemplate, Variable

UPDATE_MASK = "update_mask"


class _Absent(Enum):
    NO_BODY = "no body"


# What a route without a body passes as the body (None would be the JSON `null`).
NO_BODY: Final = _Absent.NO_BODY
_QUERY_CACHE_LIMIT = 256


@dataclass(frozen=True)
class FieldPath:
    """A resolved dotted path: the singular message fields to walk, then the leaf to set."""

    holders: tuple[FieldDescriptor, ...]
    leaf: FieldDescriptor
    json_path: str  # lowerCamelCase, for violations

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Proto field names from the top: ("user", "first_name")."""
        return (*(f.name for f in self.holders), self.leaf.name)

    def target(self, message: Message) -> Message:
        for field in self.holders:
            message = getattr(message, field.name)
        return message


@dataclass(frozen=True)
class PathParameter:
    variable: Variable
    field: FieldPath


class Transcoder:
    def __init__(self, binding: HttpBinding, template: PathTemplate) -> None:
        self.binding = binding
        rpc = binding.rpc
        self.input_type = rpc.input_type
        self.output_type = rpc.output_type
        prepare(rpc.input_descriptor)
        where = f"{rpc.service}.{rpc.name} ({binding.verb} {binding.template})"
        descriptor = rpc.input_descriptor

        self.path_parameters: tuple[PathParameter, ...] = tuple(
            PathParameter(variable, _resolve_template_field(descriptor, variable.field_path, where))
            for variable in template.variables
        )
        # Fields the client may not set from the query string, by proto path, and why.
        self.bound: dict[tuple[str, ...], str] = {p.field.names: "the path" for p in self.path_parameters}

        self.takes_body = binding.body != ""
        self.body_field: FieldDescriptor | None = None
        if binding.body not in ("", "*"):
            self.body_field = descriptor.fields_by_name[binding.body]
            self.bound[(self.body_field.name,)] = "the body"

        self.mask_field: FieldDescriptor | None = None
        mask = descriptor.fields_by_name.get(UPDATE_MASK)
        if (
            binding.verb == "PATCH"
            and self.body_field is not None
            and self.body_field.message_type is not None
            and mask is not None
            and mask.message_type is not None
            and mask.message_type.full_name == FIELD_MASK
            and not mask.is_repeated
        ):
            self.mask_field = mask

        self.response_key = ""
        if binding.response_body:
            self.response_key = rpc.output_descriptor.fields_by_name[binding.response_body].json_name
        self._query_fields: dict[str, FieldPath | FieldViolation] = {}
        # json_format.MessageToDict(message, always_print_fields_with_no_presence=True), prepared.
        self._response_encoder = MessageEncoder(rpc.output_descriptor)

    # HTTP → message.

    def request(self, raw_params: dict[str, str], body: object, query: Iterable[tuple[str, str]]) -> Message:
        """The request message; `body` is the parsed JSON, NO_BODY for a route that takes none."""
        message = self.input_type()
        violations: Violations = []
        if body is not NO_BODY:
            if not isinstance(body, dict) and (self.body_field is None or self.body_field.message_type is not None):
                raise Problem.invalid_body("The request body must be a JSON object.")
            if self.body_field is None:
                merge_json_object(message, body, "", violations)
            else:
                set_json_field(message, self.body_field, body, self.body_field.json_name, violations, 0)
        for parameter in self.path_parameters:
            self._set_path_parameter(message, parameter, raw_params[parameter.variable.field_path], violations)
        self._set_query(message, query, violations)
        if self.mask_field is not None and isinstance(body, dict):
            self._fill_update_mask(message, body)
        if violations:
            raise Problem.invalid_fields(violations)
        return message

    def _set_path_parameter(self, message: Message, parameter: PathParameter, raw: str, violations: Violations) -> None:
        path = parameter.field.json_path
        try:
            text = parameter.variable.decode(raw)
        except UnicodeDecodeError:
            violations.append(FieldViolation(path, "is not valid UTF-8 once percent-decoded"))
            return
        leaf = parameter.field.leaf
        target = parameter.field.target(message)
        target.ClearField(leaf.name)  # the path wins over a body value for the same field
        set_text_field(target, leaf, [text], path, violations)

    def _set_query(self, message: Message, query: Iterable[tuple[str, str]], violations: Violations) -> None:
        # Grouped by field, not by key: `pageSize=1&page_size=2` is one field given twice.
        grouped: dict[tuple[str, ...], tuple[FieldPath, list[str]]] = {}
        refused: set[str] = set()
        for key, value in query:
            resolved = self._query_field(key)
            if isinstance(resolved, FieldViolation):
                if key not in refused:
                    refused.add(key)
                    violations.append(resolved)
                continue
            grouped.setdefault(resolved.names, (resolved, []))[1].append(value)
        for resolved, texts in grouped.values():
            set_text_field(resolved.target(message), resolved.leaf, texts, resolved.json_path, violations)

    def _query_field(self, key: str) -> FieldPath | FieldViolation:
        resolved = self._query_fields.get(key)
        if resolved is None:
            resolved = self._resolve_query_field(key)
            if len(self._query_fields) < _QUERY_CACHE_LIMIT:
                self._query_fields[key] = resolved
        return resolved

    def _resolve_query_field(self, key: str) -> FieldPath | FieldViolation:
        if self.body_field is None and self.takes_body:
            return FieldViolation(key, "is not a query parameter of this route; send fields in the JSON body")
        descriptor = self.input_type.DESCRIPTOR
        holders: list[FieldDescriptor] = []
        json_names: list[str] = []
        segments = key.split(".")
        for index, segment in enumerate(segments):
            field = message_fields(descriptor).by_key.get(segment)
            if field is None:
                return FieldViolation(".".join([*json_names, segment]), f"is not a field of {descriptor.name}")
            json_names.append(field.json_name)
            if index == len(segments) - 1:
                resolved = FieldPath(tuple(holders), field, ".".join(json_names))
                for bound, by in self.bound.items():
                    if resolved.names[: len(bound)] == bound or bound[: len(resolved.names)] == resolved.names:
                        return FieldViolation(resolved.json_path, f"is set by {by}, not by a query parameter")
                if not settable_from_text(field):
                    hint = "its fields one by one" if is_nested_message(field) else "it in a JSON body"
                    return FieldViolation(resolved.json_path, f"cannot be a query parameter (set {hint})")
                return resolved
            if not is_nested_message(field):
                return FieldViolation(".".join(json_names), "has no fields to set from a query parameter")
            holders.append(field)
            descriptor = field.message_type
        raise AssertionError("unreachable")

    def _fill_update_mask(self, message: Message, body: dict[str, object]) -> None:
        assert self.mask_field is not None and self.body_field is not None
        mask = getattr(message, self.mask_field.name)
        if mask.paths:
            return
        fields = message_fields(self.body_field.message_type)
        paths = [fields.by_key[key].name for key in body if key in fields.by_key]
        mask.paths.extend(dict.fromkeys(paths))

    # Message → HTTP.

    def response_json(self, message: Message) -> bytes:
        data = self._response_encoder(message)
        if self.response_key:
            return orjson.dumps(data.get(self.response_key))
        return orjson.dumps(data)


def _resolve_template_field(descriptor: Descriptor, dotted: str, where: str) -> FieldPath:
    holders: list[FieldDescriptor] = []
    names = dotted.split(".")
    for index, name in enumerate(names):
        field = descriptor.fields_by_name.get(name)
        if field is None:
            raise DescriptorError(f"{where}: path variable {dotted!r}: no field {name!r} in {descriptor.full_name}")
        if index == len(names) - 1:
            if field.is_repeated or not settable_from_text(field):
                raise DescriptorError(f"{where}: path variable {dotted!r} must name a singular scalar field")
            return FieldPath(tuple(holders), field, ".".join(lower_camel(n) for n in names))
        if not is_nested_message(field):
            raise DescriptorError(f"{where}: path variable {dotted!r}: {name!r} is not a singular message field")
        holders.append(field)
        descriptor = field.message_type
    raise AssertionError("unreachable")
