"""A parser for the plain YAML subset compose.yaml is written in (no YAML library is installed).

Supported: block mappings (`key: value`, `key:` + indented block), block sequences of scalars
(`- value`), comments, and scalars that are JSON (double-quoted strings, numbers, true/false/null,
flow lists `[...]` and maps `{...}` written as JSON) or plain words. Anything else (anchors,
aliases, block scalars, tabs, single quotes, `- key: value` items) is an error, so the file
cannot silently drift out of what this checks.
"""

from __future__ import annotations

import json
import re
from typing import Any

_KEY = re.compile(r"^([A-Za-z0-9_.\-]+):(?:\s+(.*))?$")
_PLAIN = re.compile(r"^[A-Za-z0-9_./:\-]+$")


class YamlSubsetError(ValueError):
    pass


def _strip_comment(text: str) -> str:
    in_string = False
    escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "#" and (i == 0 or text[i - 1] == " "):
            return text[:i].rstrip()
    return text.rstrip()


def _scalar(text: str, lineno: int) -> Any:
    if text[:1] in ('"', "[", "{"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise YamlSubsetError(f"line {lineno}: not a JSON scalar/flow value: {text!r} ({exc})") from None
    if text in ("true", "false", "null"):
        return json.loads(text)
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if _PLAIN.match(text):
        return text
    raise YamlSubsetError(f"line {lineno}: unsupported scalar {text!r} (quote it)")


def loads(source: str) -> Any:
    lines: list[tuple[int, int, str]] = []
    for lineno, raw in enumerate(source.splitlines(), 1):
        if "\t" in raw:
            raise YamlSubsetError(f"line {lineno}: tab")
        text = _strip_comment(raw)
        if not text.strip():
            continue
        indent = len(text) - len(text.lstrip(" "))
        content = text.strip()
        if content[:1] in ("&", "*", "|", ">", "'", "!") or content.startswith("---"):
            raise YamlSubsetError(f"line {lineno}: unsupported YAML: {content!r}")
        lines.append((lineno, indent, content))

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][2].startswith("- ") or lines[i][2] == "-":
            items: list[Any] = []
            while i < len(lines) and lines[i][1] == indent and lines[i][2].startswith("- "):
                lineno, _, content = lines[i]
                item = content[2:].strip()
                if _KEY.match(item) and not item.startswith('"'):
                    raise YamlSubsetError(f"line {lineno}: mappings inside sequences are not supported")
                items.append(_scalar(item, lineno))
                i += 1
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][1] == indent:
            lineno, _, content = lines[i]
            match = _KEY.match(content)
            if not match:
                raise YamlSubsetError(f"line {lineno}: expected `key: value`, got {content!r}")
            key, value = match.group(1), match.group(2)
            if key in mapping:
                raise YamlSubsetError(f"line {lineno}: duplicate key {key!r}")
            i += 1
            if value is None:
                if i < len(lines) and lines[i][1] > indent:
                    mapping[key], i = block(i, lines[i][1])
                else:
                    mapping[key] = None
            else:
                mapping[key] = _scalar(value, lineno)
        if i < len(lines) and lines[i][1] > indent:
            raise YamlSubsetError(f"line {lines[i][0]}: unexpected indentation")
        return mapping, i

    if not lines:
        return None
    value, end = block(0, lines[0][1])
    if end != len(lines):
        raise YamlSubsetError(f"line {lines[end][0]}: unexpected dedent/content")
    return value
