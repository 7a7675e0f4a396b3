"""The OpenAPI 3.1 document of the transcoded routes, generated from the same bindings.

Schemas follow the proto3 JSON mapping the gateway speaks: lowerCamelCase properties, 64-bit
integers as strings, Timestamp as a date-time string, Duration and FieldMask as strings, enums as
string enums, repeated fields as arrays, maps as objects. `google.api.field_behavior` marks
REQUIRED fields as required and OUTPUT_ONLY ones as read-only. Paths keep custom verbs literally
(`/v1/auth:signup`); each operation is named after its RPC. Built once at start-up.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.fields import WRAPPERS, enum_values, is_map, is_nested_message, settable_from_text
from gateway.httpcache import cache_control
from gateway.routing import Route
from gateway.transcoding import Transcoder
from services.common import field_rules

Schema = dict[str, Any]
FD = FieldDescriptor
MAX_QUERY_DEPTH = 4

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
            "responses": {
                "Problem": {
                    "description": "An error.",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                }
            },
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "Makes a retried write return the first result instead of writing again.",
                    "schema": {"type": "string", "maxLength": 200},
                }
            },
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        # Anonymous or bearer: the protos do not say which calls need a token; the services do.
        "security": [{"bearerAuth": []}, {}],
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
            schema = self.single(parameter.field.leaf)
            if parameter.variable.pattern != "*":
                schema = {**schema, "description": f"Matches the path pattern `{parameter.variable.pattern}`."}
            parameters.append({"name": parameter.variable.field_path, "in": "path", "required": True, "schema": schema})
        if not transcoder.takes_body or transcoder.body_field is not None:
            bound = {p.field.names for p in transcoder.path_parameters}
            if transcoder.body_field is not None:
                bound.add((transcoder.body_field.name,))
            parameters.extend(self.query_parameters(rpc.input_descriptor, (), "", bound, set()))
        if binding.verb != "GET":
            parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "tags": [rpc.service.rsplit(".", 1)[-1]],
            "summary": f"{rpc.service}.{rpc.name}",
            "x-grpc-method": rpc.path,
        }
        if parameters:
            operation["parameters"] = parameters
        if transcoder.takes_body:
            # Not required: an empty body reads as {} (e.g. POST .../{id}:open).
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": self.request_body_schema(transcoder)}},
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
        operation["responses"] = {
            "200": ok,
            "4XX": {"$ref": "#/components/responses/Problem"},
            "5XX": {"$ref": "#/components/responses/Problem"},
        }
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
                if field_rules.is_required(field):
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
        behaviors = set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            schema = {**schema, "readOnly": True}
        if field_behavior_pb2.INPUT_ONLY in behaviors:
            schema = {**schema, "writeOnly": True}
        return schema

    def single(self, field: FieldDescriptor, *, query: bool = False) -> Schema:
        if field.message_type is not None:
            name = field.message_type.full_name
            if name in WRAPPERS:
                wrapped = self.single(field.message_type.fields_by_name["value"], query=query)
                return {**wrapped, "type": [wrapped["type"], "null"]}
            if name in _WELL_KNOWN:
                return dict(_WELL_KNOWN[name])
            return self.message_ref(field.message_type)
        if field.enum_type is not None:
            return self.enum_schema(field.enum_type, query=query)
        # The limits the services enforce, declared once in the proto (services/common/field_rules.py).
        return {**_SCALARS[field.type], **field_rules.json_schema_keywords(field)}

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
            if field_behavior_pb2.REQUIRED in field.GetOptions().Extensions[field_behavior_pb2.field_behavior]:
                required.append(field.json_name)
        schema: Schema = {"type": "object", "title": descriptor.name, "properties": properties}
        if required:
            schema["required"] = required
        oneofs = [o for o in descriptor.oneofs if len(o.fields) > 1 or not o.name.startswith("_")]
        if oneofs:
            schema["description"] = (
                "; ".join("at most one of " + ", ".join(f.json_name for f in o.fields) for o in oneofs) + "."
            )
        required_oneofs = field_rules.required_oneofs(descriptor)
        if required_oneofs:
            names = {field.name: field.json_name for field in descriptor.fields}
            schema["allOf"] = [{"anyOf": [{"required": [names[name]]} for name in oneof]} for oneof in required_oneofs]
        return schema

    def enum_schema(self, descriptor: EnumDescriptor, *, query: bool) -> Schema:
        key = descriptor.full_name
        if key not in self.schemas:
            self.schemas[key] = {
                "type": "string",
                "title": descriptor.name,
                "enum": [value.name for value in descriptor.values],
            }
        if query:
            # Query parameters also take the short lower-case form: direction=incoming.
            return {"type": "string", "enum": enum_values(descriptor).short_names + [v.name for v in descriptor.values]}
        return {"$ref": f"#/components/schemas/{key}"}
