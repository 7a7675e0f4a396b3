"""The limits `/openapi.json` shows are the limits the services enforce (issue #18): cases generated
from the document itself — every length, range, format, list, item count and required field it
declares, at the limit and one past it, in bodies, paths and queries — sent through the real
gateway and mesh. A value at the limit must not be refused for that field; a value past it must be
400 naming it. A rule the document shows and a service does not enforce fails here, and so does a
rule a service enforces (declared in the proto) that the document does not show."""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.descriptors import http_bindings, load_services
from mesh.topology import gateway_proto_modules
from services.common import field_rules
from tests.auth.test_auth_http import bearer, sign_up

pytestmark = pytest.mark.slow(8)

Schema = dict[str, Any]
FAR_AHEAD = "2031-06-01T12:00:00Z"


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclass(frozen=True)
class Case:
    operation: str
    verb: str
    path: str
    where: str  # body, path or query
    field: str  # the JSON path a violation names
    value: Any
    refused: bool  # past the limit: 400 naming the field
    why: str
    omit: bool = False

    def __str__(self) -> str:
        return f"{self.operation} {self.where} {self.field} {self.why}"


class Document:
    def __init__(self, document: Schema) -> None:
        self.document = document

    def resolve(self, schema: Schema) -> Schema:
        while "$ref" in schema:
            schema = self.document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def operations(self) -> Iterator[tuple[str, str, Schema]]:
        for path, verbs in self.document["paths"].items():
            for verb, operation in verbs.items():
                yield path, verb.upper(), operation

    def body_schema(self, operation: Schema) -> Schema | None:
        body = operation.get("requestBody")
        if body is None:
            return None
        return self.resolve(body["content"]["application/json"]["schema"])

    # A valid value for a schema, from its examples or its type.

    def valid(self, schema: Schema, depth: int = 0) -> Any:
        schema = self.resolve(schema)
        if "examples" in schema:
            return schema["examples"][0]
        if "enum" in schema:
            choices = [c for c in schema["enum"] if not str(c).endswith("_UNSPECIFIED")]
            return (choices or schema["enum"])[0]
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next(k for k in kind if k != "null")
        if schema.get("format") == "date-time":
            return FAR_AHEAD
        if schema.get("format") == "uuid":
            return str(uuid.uuid4())
        if kind == "object":
            return self.valid_object(schema, depth + 1) if depth < 3 else {}
        if kind == "array":
            return [self.valid(schema["items"], depth + 1)]
        if kind == "integer":
            return schema.get("minimum", 1)
        if kind == "boolean":
            return False
        if kind == "string" and schema.get("format") == "int64":
            return "1"
        return "x" * max(1, schema.get("minLength", 1))

    def valid_object(self, schema: Schema, depth: int = 0) -> dict[str, Any]:
        """The required properties (of a required oneof, its first field)."""
        required = set(schema.get("required", ()))
        for group in schema.get("allOf", ()):  # a required oneof, exactly one of a group
            alternatives = group.get("anyOf") or group.get("oneOf") or ()
            required.update(alternatives[0]["required"] if alternatives else ())
        return {
            name: self.valid(prop, depth)
            for name, prop in schema.get("properties", {}).items()
            if name in required and not (self.resolve(prop).get("readOnly") or prop.get("readOnly"))
        }


def values(schema: Schema, required: bool) -> Iterator[tuple[Any, bool, str]]:
    """(value, refused, why) at and past each limit `schema` declares."""
    kind = schema.get("type")
    example = schema.get("examples", [None])[0]
    if kind == "string":
        pattern = schema.get("pattern", "")
        fmt = schema.get("format")
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        shaped = fmt in ("uuid", "email", "uri") or "enum" in schema or pattern.startswith("^[a-z")
        if "enum" in schema:
            # A required enum's zero value is "not set" (refused as required).
            choices = [c for c in schema["enum"] if not (required and c.endswith("_UNSPECIFIED"))]
            for choice in choices[:3]:
                yield choice, False, f"= {choice!r}"
            yield "not-one-of-them", True, "not in the list"
        if fmt == "uuid":
            yield str(uuid.uuid4()).upper(), False, "an upper-case UUID"
            yield "not-a-uuid", True, "not a UUID"
        if fmt == "email":
            yield "not-an-email", True, "not an email"
            if hi:
                yield "a" * (hi - 12) + "@example.com", False, f"an email of {hi} characters"
                yield "a" * (hi - 11) + "@example.com", True, f"an email of {hi + 1} characters"
        if fmt == "uri":
            yield "http://example.com/a.png", True, "not https"
            if hi:
                yield "https://example.com/" + "a" * (hi - 20), False, f"a URL of {hi} characters"
                yield "https://example.com/" + "a" * (hi - 19), True, f"a URL of {hi + 1} characters"
        if pattern.startswith("^[a-z") and example is not None:  # a shape of its own (usernames)
            yield example, False, "the example"
            yield example + "!\u00e9", True, "off the pattern"
        if pattern.startswith("^[A-Za-z0-9") and example is not None:  # device tokens
            yield example, False, "the example"
            yield example + " \u00e9", True, "off the pattern"
        if not shaped:
            if hi is not None:
                yield "a" * hi, False, f"{hi} characters"
                yield "a" * (hi + 1), True, f"{hi + 1} characters"
            if lo > 1:
                yield "a" * lo, False, f"{lo} characters"
                yield "a" * (lo - 1), True, f"{lo - 1} characters"
            if pattern == r"^[^\x00-\x1f\x7f]*$":
                yield "a\tb", True, "a tab (one line)"
            elif pattern == r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$":
                yield "a\nb", False, "a line break"
                yield "a\x01b", True, "a control character"
        if required:
            yield "   ", True, "blank"
    elif kind == "integer":
        if "minimum" in schema:
            yield schema["minimum"], False, f"= minimum {schema['minimum']}"
            yield schema["minimum"] - 1, True, f"below minimum {schema['minimum']}"
        if "maximum" in schema:
            yield schema["maximum"], False, f"= maximum {schema['maximum']}"
            yield schema["maximum"] + 1, True, f"above maximum {schema['maximum']}"
    elif kind == "array" and "maxItems" in schema:
        items = schema["items"]
        n = schema["maxItems"]
        if items.get("format") == "uuid":
            yield [str(uuid.uuid4()) for _ in range(n)], False, f"{n} items"
            yield [str(uuid.uuid4()) for _ in range(n + 1)], True, f"{n + 1} items"


Sendable = tuple[Case, dict[str, Any], dict[str, Any], dict[str, Any] | None]


def cases(doc: Document) -> Iterator[Sendable]:
    """Each case with the path values, query and body to send it with."""
    for template, verb, operation in doc.operations():
        name = operation["operationId"]
        parameters = [p for p in operation.get("parameters", ()) if "$ref" not in p]
        path_values = {p["name"]: doc.valid(p["schema"]) for p in parameters if p["in"] == "path"}
        body_schema = doc.body_schema(operation)
        base_body = doc.valid_object(body_schema) if body_schema is not None else None
        for parameter in parameters:
            where = parameter["in"]
            if where not in ("path", "query"):
                continue
            for value, refused, why in values(parameter["schema"], parameter.get("required", False)):
                if where == "path" and (value == "   " or "/" in str(value)):
                    continue  # not a path segment the router takes
                case = Case(name, verb, template, where, camel(parameter["name"]), value, refused, why)
                paths, query = dict(path_values), {}
                if where == "path":
                    paths[parameter["name"]] = value
                else:
                    query[parameter["name"]] = value
                yield case, paths, query, base_body
        if body_schema is None or base_body is None:
            continue
        yield from _body_cases(doc, name, verb, template, path_values, base_body, body_schema, "")


def _body_cases(
    doc: Document,
    name: str,
    verb: str,
    template: str,
    path_values: dict[str, Any],
    base_body: dict[str, Any],
    schema: Schema,
    prefix: str,
) -> Iterator[Sendable]:
    required = set(schema.get("required", ()))
    oneofs = [
        [alternative["required"][0] for alternative in group.get("anyOf") or group.get("oneOf")]
        for group in schema.get("allOf", ())
        if "anyOf" in group or "oneOf" in group
    ]
    for prop_name, prop in schema.get("properties", {}).items():
        resolved = doc.resolve(prop)
        if resolved.get("readOnly") or prop.get("readOnly"):
            continue
        field = prefix + prop_name
        keys = field.split(".")
        if resolved.get("type") == "object" and "properties" in resolved and not prefix:
            nested_base = copy.deepcopy(base_body)
            nested_base.setdefault(prop_name, doc.valid_object(resolved))
            yield from _body_cases(doc, name, verb, template, path_values, nested_base, resolved, field + ".")
            continue
        if prop_name in required:
            body = copy.deepcopy(base_body)
            _remove(body, keys)
            yield Case(name, verb, template, "body", field, None, True, "missing", omit=True), path_values, {}, body
        rivals = [n for group in oneofs for n in group if prop_name in group and n != prop_name]
        for value, refused, why in values(resolved, prop_name in required):
            body = copy.deepcopy(base_body)
            for rival in rivals:  # one field of a oneof at a time
                _remove(body, [*keys[:-1], rival])
            _set(body, keys, value)
            yield Case(name, verb, template, "body", field, value, refused, why), path_values, {}, body


def _set(body: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        body = body.setdefault(key, {})
    body[keys[-1]] = value


def _remove(body: dict[str, Any], keys: list[str]) -> None:
    for key in keys[:-1]:
        body = body.get(key, {})
    body.pop(keys[-1], None)


def _url(template: str, values: dict[str, Any]) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: str(values[m.group(1)]), template)


async def test_every_limit_the_document_shows_is_the_one_enforced(client: httpx.AsyncClient) -> None:
    doc = Document((await client.get("/openapi.json")).json())
    session = await sign_up(client)
    headers = bearer(session)
    wrong: list[str] = []
    seen = 0
    for case, paths, query, body in cases(doc):
        seen += 1
        response = await client.request(
            case.verb,
            _url(case.path, paths),
            params=query or None,
            json=body if case.verb != "GET" and body is not None else None,
            headers=headers,
        )
        assert response.status_code < 500, f"{case}: {response.status_code} {response.text}"
        named: set[str] = set()
        if response.status_code == 400 and response.json()["reason"] == "INVALID_FIELDS":
            for violation in response.json().get("fieldViolations", []):
                # A body that is one field of the request (PATCH's resource) names it first.
                named.update((violation["field"], violation["field"].split(".", 1)[-1]))
        if case.refused and case.field not in named:
            wrong.append(f"{case}: expected 400 naming it, got {response.status_code} {response.text[:300]}")
        elif not case.refused and case.field in named:
            wrong.append(f"{case}: refused at the limit: {response.text[:300]}")
    assert seen > 150, f"only {seen} cases: the document lost its limits"
    assert not wrong, f"{len(wrong)} of {seen} cases disagree:\n" + "\n".join(wrong)


def test_every_declared_rule_is_in_the_document() -> None:
    """Every request field (at any depth) with a declared rule or marked REQUIRED renders keywords:
    a rule written in a proto cannot be left out of the document by a field kind openapi.py does
    not render."""
    missing = []
    for binding in http_bindings(load_services(gateway_proto_modules().split(","))):
        for field in _fields(binding.rpc.input_descriptor, set()):
            rules = field_rules.declared(field)
            if rules is None:
                continue
            keywords = field_rules.json_schema_keywords(field)
            expected = {
                "minLength": rules.min_length or None,
                "maxLength": rules.max_length if rules.HasField("max_length") else None,
                "minimum": rules.minimum if rules.HasField("minimum") else None,
                "maximum": rules.maximum if rules.HasField("maximum") else None,
            }
            for keyword, value in expected.items():
                if value is not None and keywords.get(keyword) != value:
                    missing.append(f"{field.full_name}: {keyword} {value} rendered as {keywords.get(keyword)}")
            if (rules.pattern or rules.format or rules.one_of) and not ({"pattern", "enum"} & keywords.keys()):
                missing.append(f"{field.full_name}: its shape is not rendered")
    assert not missing, "\n".join(missing)


def _fields(descriptor: Any, seen: set[str]) -> Iterator[Any]:
    if descriptor.full_name in seen:
        return
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        yield field
        if field.message_type is not None:
            yield from _fields(field.message_type, seen)
