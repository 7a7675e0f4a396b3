"""The string schemas of `/openapi.json` allow nothing the services' field rules refuse: each
probe a schema lets through passes the field's rule (services/common/field_rules.py) and holds no
NUL. (The other way, what the services accept that the document does not allow, is measured by
tests/gateway/test_fuzz_accepted.py.)"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from google.protobuf.descriptor import FieldDescriptor

from gateway.descriptors import http_bindings, load_services
from gateway.openapi import _Builder
from gateway.routing import RouteTable
from mesh.topology import gateway_proto_modules
from services.common import field_rules

# Values a client might send; each is judged by the field's rule and by its schema in the document.
PROBES = [
    "",
    " ",
    "\x1c",
    "\x85",
    "\ufeff",
    "a",
    " a ",
    "ab",
    "a\x00b",
    "a\nb",
    "       a",
    "ada_l",
    "ADA_L",
    "ada@example.com",
    "https://example.com/ada.png",
    "GB",
    "gb",
    "0192f5e0-7c1a-7b3e-9d4f-1a2b3c4d5e6f",
    "😊",
    "correct horse battery staple",
    "x" * 30,
    "x" * 300,
]


def string_fields() -> list[tuple[str, FieldDescriptor, dict[str, Any]]]:
    """Every string field of every request message, with its schema in the document (in a body
    or query; and as a path variable)."""
    builder = _Builder()
    found = []
    seen: set[str] = set()
    for route in RouteTable(http_bindings(load_services(gateway_proto_modules().split(",")))).routes:
        descriptor = route.binding.rpc.input_descriptor
        for field in descriptor.fields:
            name = f"{descriptor.full_name}.{field.name}"
            if field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated and name not in seen:
                seen.add(name)
                found.append((name, field, builder.single(field)))
                found.append((f"{name} (path)", field, builder.single(field, in_path=True)))
    return found


@pytest.mark.parametrize(("name", "field", "schema"), string_fields(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_string_the_document_allows_passes_the_field_rule(
    name: str, field: FieldDescriptor, schema: dict[str, Any]
) -> None:
    rule = field_rules.string_rule(field)
    allowed = [probe for probe in PROBES if jsonschema.Draft202012Validator(schema).is_valid(probe)]
    for probe in allowed:
        assert "\x00" not in probe, (name, schema)
        if rule is not None:
            _, wrong = rule.check(probe)
            assert wrong is None, (name, repr(probe), wrong, schema)


def test_patterns_read_alike_in_python_and_ecma() -> None:
    # The blank and trimmed-length patterns rely on character classes both engines read the same.
    assert re.fullmatch(field_rules.NOT_BLANK_PATTERN, "a")
    assert not re.search(field_rules.NOT_BLANK_PATTERN, " \x1c\x1d\x1e\x1f\x85\t\n")
