"""Spelling conversions between proto field names (snake_case) and JSON names (lowerCamelCase)."""

from __future__ import annotations

import re

_UPPER = re.compile(r"[A-Z]")


def lower_camel(name: str) -> str:
    """`first_name` → `firstName`, the way protoc derives a field's json_name."""
    if "_" not in name:
        return name
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake(name: str) -> str:
    """`firstName` → `first_name`; a name already in snake_case is left as it is."""
    return _UPPER.sub(lambda m: "_" + m.group(0).lower(), name)


def camel_path(path: str) -> str:
    """A proto field path as services report it (`user.first_name`, `ids[3]`) in JSON spelling
    (`user.firstName`, `ids[3]`): each dotted segment converted, index suffixes kept."""
    return ".".join(_camel_segment(segment) for segment in path.split("."))


def _camel_segment(segment: str) -> str:
    name, bracket, rest = segment.partition("[")
    return lower_camel(name) + bracket + rest


def upper_snake(name: str) -> str:
    """`CapsuleStatus` → `CAPSULE_STATUS`: the prefix style guide asks enum values to carry."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()
