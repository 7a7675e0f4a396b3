"""The OpenAPI 3.1 document of the transcoded routes, generated from the same bindings.

Schemas follow the proto3 JSON mapping the gateway speaks: lowerCamelCase properties, 64-bit
integers as strings, Timestamp as a date-time string, Duration and FieldMask as strings, enums as
string enums, repeated fields as arrays, maps as objects. `google.api.field_behavior` marks
REQUIRED fields as required and OUTPUT_ONLY and IMMUTABLE ones as read-only. Paths keep custom
verbs literally (`/v1/auth:signup`); each operation is named after its RPC. Built once at start-up.

The schemas say what the gateway and services accept, no more (tests/gateway/test_fuzz_accepted.py
measures how much of it they do): the declared field rules (services/common/field_rules.py); an
optional string may also be empty (a blank optional value is not judged); no string holds NUL; a
REQUIRED enum never takes its zero value; a REQUIRED field is a required query parameter; a oneof
takes at most one of its fields; a key that names no field is refused; a body is required when {}
would be refused; a PATCH's update mask names the fields its body may set. Every body has an
example built from the declared examples (`example_body`), and every operation lists each error
status it can answer, as problem+json (gateway/openapi_errors.py).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway import openapi_errors
from gateway.fields import WRAPPERS, enum_values, is_map, is_nested_message, settable_from_text
from gateway.httpcache import cache_control
from gateway.routing import Route
from gateway.transcoding import Transcoder
from services.common import field_rules

Schema = dict[str, Any]
FD = FieldDescriptor
MAX_QUERY_DEPTH = 4
# How deep an example body follows nested messages (recursive types stop there).
MAX_EXAMPLE_DEPTH = 4
# A time far enough ahead for every "must be in the future" rule (an unlock time: 1 minute to 50
# years ahead), fixed so the document is the same on every start.
EXAMPLE_TIME = "2027-12-24T18:00:00Z"
EXAMPLE_UUID = "0192f5e0-7c1a-7b3e-9d4f-1a2b3c4d5e6f"
_NO_EXAMPLE: Any = object()
# The keywords that judge a string (the rest annotate it).
_STRING_CONSTRAINTS = ("minLength", "maxLength", "pattern", "format", "enum", "allOf")
# SPEC §3: a NUL character in any string is refused (services/common/validation.py).
NO_NUL_PATTERN = r"^[^\x00]*$"
# What an Idempotency-Key may be (gateway/headers.py, upstream.py, services/common/idempotency.py):
# 1 to 200 characters of printable ASCII, no surrounding spaces (HTTP drops them).
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"

_SCALARS: dict[int, Schema] = {
    FD.TYPE_STRING: {"type": "string"},
    FD.TYPE_BYTES: {"type": "string", "format": "byte"},
    FD.TYPE_BOOL: {"type": "boolean"},
    FD.TYPE_INT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FD.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    FD.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    FD.TYPE_INT64: {"type": "string", "format": "int64"},
    FD.TYPE_SINT64: {"type": "string", "format": "int64"},
    FD.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FD.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FD.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FD.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FD.TYPE_FLOAT: {"type": "number", "format": "float"},
}

_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$", "examples": ["3.5s"]},
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths in lowerCamelCase, e.g. `firstName,lastName`.",
    },
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
}

PROBLEM_SCHEMA: Schema = {
    "type": "object",
    "description": "An error, as RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string", "format": "uri-reference"},
        "title": {"type": "string"},
        "status": {"type": "integer", "format": "int32"},
        "detail": {"type": "string"},
        "reason": {"type": "string", "description": "Machine-readable cause, e.g. INVALID_FIELDS, TOKEN_EXPIRED."},
        "fieldViolations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string", "description": "JSON path, e.g. user.firstName"},
                    "description": {"type": "string"},
                },
                "required": ["field", "description"],
            },
        },
    },
    "required": ["type", "title", "status", "detail", "reason", "fieldViolations"],
}


def openapi_document(routes: Iterable[Route], title: str = "capsule-mesh API", version: str = "v1") -> dict[str, Any]:
    builder = _Builder()
    routes = list(routes)
    operation_ids = _operation_ids(routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = paths.setdefault(route.template.openapi_path(), {})
        path[route.binding.verb.lower()] = builder.operation(route, operation_ids[route])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "HTTP/JSON gateway in front of capsule-mesh's gRPC services, generated from their "
                "google.api.http annotations. Errors are application/problem+json."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {**dict(sorted(builder.schemas.items())), "Problem": PROBLEM_SCHEMA},
            # One problem+json response per status; each operation refers to those it can answer.
            "responses": openapi_errors.problem_responses(),
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": (
                        "Makes a retried write return the first result instead of writing again: the same key "
                        "from the same caller within 24 h (a different request with it is 409)."
                    ),
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": IDEMPOTENCY_KEY_PATTERN},
                }
            },
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        # Each operation says whether it needs the token (`(capsule.common.v1.anonymous)`).
        "security": [{"bearerAuth": []}],
    }


def _operation_ids(routes: list[Route]) -> dict[Route, str]:
    names = Counter({route.binding.rpc.path: route.binding.rpc.name for route in routes}.values())
    ids: dict[Route, str] = {}
    for route in routes:
        rpc = route.binding.rpc
        base = rpc.name if names[rpc.name] == 1 else f"{rpc.service.rsplit('.', 1)[-1]}_{rpc.name}"
        ids[route] = base if route.binding.index == 0 else f"{base}_{route.binding.index + 1}"
    return ids


class _Builder:
    def __init__(self) -> None:
        self.schemas: dict[str, Schema] = {}

    def operation(self, route: Route, operation_id: str) -> dict[str, Any]:
        binding = route.binding
        rpc = binding.rpc
        transcoder = Transcoder(binding, route.template)
        parameters: list[dict[str, Any]] = []
        for parameter in transcoder.path_parameters:
            leaf = parameter.field.leaf
            schema = self.single(leaf, in_path=True)
            if parameter.variable.pattern != "*":
                schema = {**schema, "description": f"Matches the path pattern `{parameter.variable.pattern}`."}
            path_parameter = {"name": parameter.variable.field_path, "in": "path", "required": True, "schema": schema}
            declared = _declared_example(leaf)
            if declared is not _NO_EXAMPLE:
                path_parameter["example"] = declared
            parameters.append(path_parameter)
        if not transcoder.takes_body or transcoder.body_field is not None:
            bound = {p.field.names for p in transcoder.path_parameters}
            if transcoder.body_field is not None:
                bound.add((transcoder.body_field.name,))
            parameters.extend(self.query_parameters(rpc.input_descriptor, (), "", bound, set()))
        if transcoder.mask_field is not None:
            for query_parameter in parameters:
                if query_parameter.get("name") == transcoder.mask_field.json_name:
                    query_parameter["schema"] = _update_mask_schema(transcoder)
        if openapi_errors.takes_idempotency_key(route):
            parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "tags": [rpc.service.rsplit(".", 1)[-1]],
            "summary": f"{rpc.service}.{rpc.name}",
            "x-grpc-method": rpc.path,
            "security": [{"bearerAuth": []}] if openapi_errors.needs_token(route) else [],
        }
        if parameters:
            operation["parameters"] = parameters
        if transcoder.takes_body:
            # An empty body reads as {} (e.g. POST .../{id}:open): required when {} would be refused.
            operation["requestBody"] = {
                "required": _body_required(transcoder),
                "content": {
                    "application/json": {
                        "schema": self.request_body_schema(transcoder),
                        "example": example_body(transcoder),
                    }
                },
            }
        ok: dict[str, Any] = {
            "description": "OK",
            "content": {"application/json": {"schema": self.response_schema(transcoder)}},
        }
        caching = rpc.policy.http_cache
        if binding.verb == "GET" and caching is not None:
            ok["headers"] = {
                "Cache-Control": {
                    "description": "Declared by the method (capsule.common.v1.http_cache).",
                    "schema": {"type": "string", "const": cache_control(caching)},
                }
            }
        operation["responses"] = {"200": ok, **openapi_errors.operation_responses(route, transcoder)}
        return operation

    def request_body_schema(self, transcoder: Transcoder) -> Schema:
        if transcoder.body_field is not None:
            return self.field(transcoder.body_field)
        descriptor = transcoder.input_type.DESCRIPTOR
        path_bound = {p.field.names[0] for p in transcoder.path_parameters if len(p.field.names) == 1}
        if not path_bound:
            return self.message_ref(descriptor)
        return self.message_schema(descriptor, exclude=path_bound)

    def response_schema(self, transcoder: Transcoder) -> Schema:
        descriptor = transcoder.output_type.DESCRIPTOR
        if transcoder.binding.response_body:
            return self.field(descriptor.fields_by_name[transcoder.binding.response_body])
        return self.message_ref(descriptor)

    def query_parameters(
        self,
        descriptor: Descriptor,
        prefix: tuple[str, ...],
        json_prefix: str,
        bound: set[tuple[str, ...]],
        seen: set[str],
    ) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = []
        if descriptor.full_name in seen or len(prefix) >= MAX_QUERY_DEPTH:
            return parameters
        for field in descriptor.fields:
            names = (*prefix, field.name)
            if any(names[: len(b)] == b for b in bound):
                continue
            name = f"{json_prefix}{field.json_name}"
            if settable_from_text(field):
                parameter: dict[str, Any] = {"name": name, "in": "query", "schema": self.field(field, query=True)}
                if not prefix and field_rules.is_required(field) and not field.is_repeated:
                    parameter["required"] = True
                if field.is_repeated:
                    parameter["explode"] = True
                parameters.append(parameter)
            elif is_nested_message(field):
                parameters.extend(
                    self.query_parameters(field.message_type, names, f"{name}.", bound, seen | {descriptor.full_name})
                )
        return parameters

    # Schemas.

    def field(self, field: FieldDescriptor, *, query: bool = False) -> Schema:
        if is_map(field):
            schema: Schema = {
                "type": "object",
                "additionalProperties": self.single(field.message_type.fields_by_name["value"], query=query),
            }
        elif field.is_repeated:
            schema = {"type": "array", "items": self.single(field, query=query), **field_rules.array_keywords(field)}
        else:
            schema = self.single(field, query=query)
        if _read_only(field):
            schema = {**schema, "readOnly": True}
        behaviors = set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])
        if field_behavior_pb2.INPUT_ONLY in behaviors:
            schema = {**schema, "writeOnly": True}
        return schema

    def single(self, field: FieldDescriptor, *, query: bool = False, in_path: bool = False) -> Schema:
        if field.message_type is not None:
            name = field.message_type.full_name
            if name in WRAPPERS:
                wrapped = self.single(field.message_type.fields_by_name["value"], query=query)
                return {**wrapped, "type": [wrapped["type"], "null"]}
            if name in _WELL_KNOWN:
                return dict(_WELL_KNOWN[name])
            return self.message_ref(field.message_type)
        if field.enum_type is not None:
            required = field_rules.is_required(field) and not field.is_repeated
            return self.enum_schema(field.enum_type, query=query, required=required)
        # The limits the services enforce, declared once in the proto (services/common/field_rules.py).
        schema = {**_SCALARS[field.type], **field_rules.json_schema_keywords(field)}
        if field.type == FD.TYPE_STRING:
            schema = _without_nul(schema)
            if not in_path and _may_be_empty(field):
                # An optional string may be empty: its rules judge a value only when there is one.
                schema = _or_empty(schema)
        return schema

    def message_ref(self, descriptor: Descriptor) -> Schema:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        if descriptor.full_name not in self.schemas:
            self.schemas[descriptor.full_name] = {}  # placeholder: breaks cycles
            self.schemas[descriptor.full_name] = self.message_schema(descriptor)
        return {"$ref": f"#/components/schemas/{descriptor.full_name}"}

    def message_schema(self, descriptor: Descriptor, exclude: Iterable[str] = ()) -> Schema:
        excluded = set(exclude)
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in descriptor.fields:
            if field.name in excluded:
                continue
            properties[field.json_name] = self.field(field)
            if field_rules.is_required(field):
                required.append(field.json_name)
        # A key that names no field is refused (gateway/fields.py merge_json_object).
        schema: Schema = {
            "type": "object",
            "title": descriptor.name,
            "properties": properties,
            "additionalProperties": False,
        }
        if required:
            schema["required"] = required
        oneofs = [o for o in descriptor.oneofs if len(o.fields) > 1 or not o.name.startswith("_")]
        all_of: list[Schema] = []
        if oneofs:
            schema["description"] = (
                "; ".join("at most one of " + ", ".join(f.json_name for f in o.fields) for o in oneofs) + "."
            )
            # Two fields of one oneof in a body are refused (gateway/fields.py merge_json_object).
            pairs = [
                [a.json_name, b.json_name]
                for o in oneofs
                for i, a in enumerate(o.fields)
                for b in o.fields[i + 1 :]
                if a.name not in excluded and b.name not in excluded
            ]
            all_of.extend({"not": {"required": pair}} for pair in pairs)
        required_oneofs = field_rules.required_oneofs(descriptor)
        if required_oneofs:
            names = {field.name: field.json_name for field in descriptor.fields}
            all_of.extend({"anyOf": [{"required": [names[name]]} for name in oneof]} for oneof in required_oneofs)
        for exactly_one in field_rules.exactly_one_groups(descriptor):  # the example sets the first
            fields = [descriptor.fields_by_name[name] for name in exactly_one]
            # Present and not empty: an empty list or string counts as not given.
            one_of = [
                {
                    "required": [field.json_name],
                    "properties": {field.json_name: {"minItems": 1} if field.is_repeated else {"minLength": 1}},
                }
                for field in fields
            ]
            all_of.append({"oneOf": one_of})
            note = "Exactly one of " + ", ".join(field.json_name for field in fields) + "."
            schema["description"] = f"{schema['description']} {note}" if "description" in schema else note
        if all_of:
            schema["allOf"] = all_of
        return schema

    def enum_schema(self, descriptor: EnumDescriptor, *, query: bool, required: bool = False) -> Schema:
        key = descriptor.full_name
        if key not in self.schemas:
            self.schemas[key] = {
                "type": "string",
                "title": descriptor.name,
                "enum": [value.name for value in descriptor.values],
            }
        # A REQUIRED enum field is refused at its zero value (services/common/validation.py).
        names = [value.name for value in descriptor.values if not (required and value.number == 0)]
        if query:
            # Query parameters also take the short lower-case form: direction=incoming.
            return {"type": "string", "enum": enum_values(descriptor).short_names + names}
        if required:
            return {"type": "string", "title": descriptor.name, "enum": names}
        return {"$ref": f"#/components/schemas/{key}"}


_READ_ONLY = frozenset({field_behavior_pb2.OUTPUT_ONLY, field_behavior_pb2.IMMUTABLE})


def _read_only(field: FieldDescriptor) -> bool:
    """Never sent in a request body that holds the field's message: OUTPUT_ONLY, or IMMUTABLE (set
    when the resource is made, by a create request of its own, and refused by its update)."""
    return not _READ_ONLY.isdisjoint(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _may_be_empty(field: FieldDescriptor) -> bool:
    """Whether the services take "" for the string field: not for a REQUIRED one, a member of a
    oneof that must be set, or an item of a list (a blank item names nothing)."""
    if field.is_repeated or field_rules.is_required(field):
        return False
    oneof = field.containing_oneof
    return oneof is None or not any(field.name in names for names in field_rules.required_oneofs(field.containing_type))


def _without_nul(schema: Schema) -> Schema:
    """`schema` refusing NUL, unless a pattern of it already does (control characters, formats:
    probed with its example, or "a", before and after a NUL is added)."""
    if "enum" in schema:
        return schema
    examples = schema.get("examples") or ["a"]
    probe = examples[0] if isinstance(examples[0], str) else "a"
    patterns = [schema.get("pattern"), *(part.get("pattern") for part in schema.get("allOf", ()))]
    for pattern in patterns:
        if pattern is not None and re.search(pattern, probe) and not re.search(pattern, probe + "\x00"):
            return schema
    if "pattern" not in schema:
        return {**schema, "pattern": NO_NUL_PATTERN}
    return {**schema, "allOf": [*schema.get("allOf", ()), {"pattern": NO_NUL_PATTERN}]}


def _body_required(transcoder: Transcoder) -> bool:
    """Whether an empty body ({}) would be refused: the message has a required field outside the
    path, a oneof that must be set, or fields of which one must be given."""
    if transcoder.body_field is not None:
        return field_rules.is_required(transcoder.body_field)
    descriptor = transcoder.input_type.DESCRIPTOR
    path_bound = {p.field.names[0] for p in transcoder.path_parameters}
    return (
        any(field_rules.is_required(field) and field.name not in path_bound for field in descriptor.fields)
        or bool(field_rules.required_oneofs(descriptor))
        or bool(field_rules.exactly_one_groups(descriptor))
    )


def _update_mask_schema(transcoder: Transcoder) -> Schema:
    """The update mask of a PATCH: comma-separated names of the body's fields a client may set
    (either spelling); left out, the body's keys are the mask."""
    assert transcoder.body_field is not None
    names: list[str] = []
    for field in transcoder.body_field.message_type.fields:
        if not _read_only(field):
            names.extend(dict.fromkeys((field.json_name, field.name)))
    one = "(" + "|".join(re.escape(name) for name in names) + ")"
    return {
        "type": "string",
        "pattern": f"^({one}(,{one})*)?$",
        "description": "Comma-separated fields of the body to change, e.g. `" + ",".join(names[:2]) + "`.",
    }


def _accepts_empty(schema: Schema) -> bool:
    if schema.get("minLength", 0) > 0 or "format" in schema:
        return False
    if "enum" in schema:
        return "" in schema["enum"]
    return "pattern" not in schema or re.search(schema["pattern"], "") is not None


def _or_empty(schema: Schema) -> Schema:
    """`schema`, or the empty string when its rules would refuse that."""
    if _accepts_empty(schema):
        return schema
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], ""]}
    constraints = {k: v for k, v in schema.items() if k in _STRING_CONSTRAINTS}
    annotations = {k: v for k, v in schema.items() if k not in _STRING_CONSTRAINTS}
    return {**annotations, "anyOf": [constraints, {"const": ""}]}


# --- example bodies ----------------------------------------------------------------------------------


def example_body(transcoder: Transcoder) -> Any:
    """A request body the services accept (as far as each field's own rules go): every REQUIRED
    field and every field that declares an example (`(capsule.common.v1.field).example`), with
    that example or a value fitting its type; never a field the path sets or a read-only one
    (OUTPUT_ONLY, IMMUTABLE), at most one field of a oneof."""
    if transcoder.body_field is not None:
        return _field_example(transcoder.body_field, 0)
    path_bound = {p.field.names[0] for p in transcoder.path_parameters if len(p.field.names) == 1}
    return _message_example(transcoder.input_type.DESCRIPTOR, path_bound, 0)


def _message_example(descriptor: Descriptor, exclude: set[str], depth: int) -> dict[str, Any]:
    example: dict[str, Any] = {}
    taken: set[str] = set()  # the oneofs that have their field
    required_oneofs = {names[0] for names in field_rules.required_oneofs(descriptor)}
    for exactly_one in field_rules.exactly_one_groups(descriptor):
        required_oneofs.add(exactly_one[0])
        exclude = exclude | set(exactly_one[1:])
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and len(oneof.fields) == 1 and oneof.name.startswith("_"):
            oneof = None  # proto3 `optional`: presence, not a choice
        if field.name in exclude or _read_only(field) or (oneof is not None and oneof.name in taken):
            continue
        wanted = (
            field_rules.is_required(field)
            or field.name in required_oneofs
            or _declared_example(field) is not _NO_EXAMPLE
        )
        if not wanted:
            continue
        value = _field_example(field, depth)
        if value is _NO_EXAMPLE:
            continue
        example[field.json_name] = value
        if oneof is not None:
            taken.add(oneof.name)
    return example


def _field_example(field: FieldDescriptor, depth: int) -> Any:
    if is_map(field):
        entry = field.message_type
        key, value = (
            _single_example(entry.fields_by_name["key"], depth),
            _single_example(entry.fields_by_name["value"], depth),
        )
        return _NO_EXAMPLE if value is _NO_EXAMPLE else {str(key).lower(): value}
    value = _single_example(field, depth)
    if value is _NO_EXAMPLE or not field.is_repeated:
        return value
    return [value]


_WELL_KNOWN_EXAMPLES: dict[str, Any] = {
    "google.protobuf.Timestamp": EXAMPLE_TIME,
    "google.protobuf.Duration": "60s",
    "google.protobuf.Empty": {},
    "google.protobuf.Struct": {},
    "google.protobuf.ListValue": [],
}


def _single_example(field: FieldDescriptor, depth: int) -> Any:
    declared = _declared_example(field)
    if declared is not _NO_EXAMPLE:
        return declared
    if field.message_type is not None:
        name = field.message_type.full_name
        if name in WRAPPERS:
            return _single_example(field.message_type.fields_by_name["value"], depth)
        if name in _WELL_KNOWN_EXAMPLES:
            return _WELL_KNOWN_EXAMPLES[name]
        if name in _WELL_KNOWN or depth >= MAX_EXAMPLE_DEPTH:
            return _NO_EXAMPLE  # a FieldMask, Any or Value has no value that fits every method
        return _message_example(field.message_type, set(), depth + 1)
    if field.enum_type is not None:
        values = field.enum_type.values
        return next((v.name for v in values if v.number != 0), values[0].name)
    if field.type == FD.TYPE_BOOL:
        return False
    if field.type == FD.TYPE_BYTES:
        return "ZXhhbXBsZQ=="
    if field.type == FD.TYPE_STRING:
        return _string_example(field)
    rules = field_rules.declared(field)
    number: float = rules.minimum if rules is not None and rules.HasField("minimum") else 0
    if field.cpp_type in (FD.CPPTYPE_DOUBLE, FD.CPPTYPE_FLOAT):
        return float(number)
    if field.cpp_type in (FD.CPPTYPE_INT64, FD.CPPTYPE_UINT64):
        return str(int(number))  # 64-bit integers are strings in proto3 JSON
    return int(number)


_FORMAT_EXAMPLES = {
    field_rules.Rules.FORMAT_UUID: EXAMPLE_UUID,
    field_rules.Rules.FORMAT_EMAIL: "name@example.com",
    field_rules.Rules.FORMAT_HTTPS_URL: "https://example.com/",
    field_rules.Rules.FORMAT_COUNTRY_CODE: "FR",
}


def _string_example(field: FieldDescriptor) -> str:
    """A string for a field that declares no example: its format's, its list's first, or text as
    long as its length rules want (a pattern without an example cannot be guessed)."""
    rules = field_rules.declared(field)
    if rules is None:
        return "string"
    if rules.format in _FORMAT_EXAMPLES:
        return _FORMAT_EXAMPLES[rules.format]
    if rules.one_of:
        return str(rules.one_of[0])
    text = "example"
    if rules.min_length > len(text):
        text = "example " * (rules.min_length // 8 + 1)
    if rules.HasField("max_length"):
        text = text[: rules.max_length]
    return text.strip() if len(text.strip()) >= rules.min_length else text


def _declared_example(field: FieldDescriptor) -> Any:
    """The field's declared example, typed as JSON carries it; _NO_EXAMPLE when it declares none."""
    rules = field_rules.declared(field)
    if rules is None or not rules.example:
        return _NO_EXAMPLE
    text = rules.example
    if field.cpp_type in (FD.CPPTYPE_INT32, FD.CPPTYPE_UINT32):
        return int(text)
    if field.cpp_type in (FD.CPPTYPE_DOUBLE, FD.CPPTYPE_FLOAT):
        return float(text)
    if field.cpp_type == FD.CPPTYPE_BOOL:
        return text.lower() == "true"
    return text
