"""Values synthesised from JSON schemas, for both emulators' tool calls and JSON replies.

The emulators answer from what they received: strings come from the user's own words
(the first quoted phrase, else the last word), numbers from the first number in them,
so a caller sees ``get_weather("Paris")`` or ``magic_function(3)`` come back.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any


class SchemaError(ValueError):
    """The schema cannot be followed (a remote or dangling ``$ref``)."""


@dataclass(frozen=True)
class Hint:
    """Values taken from the user's text for synthesized arguments, so a caller can see
    its own words come back (``get_weather("Paris")``, ``magic_function(3)``)."""

    text: str = "emulated"
    number: float | None = None


_QUOTED = re.compile(r"""(?<!\w)'([^']{1,80})'(?!\w)|"([^"]{1,80})"|“([^”]{1,80})”""")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


def synthesize(schema: Any, hint: Hint) -> Any:
    """A value valid for ``schema``: required properties only, the simplest of each type."""
    return _synthesize(schema, schema, hint)


def _synthesize(schema: Any, root: Any, hint: Hint, depth: int = 0) -> Any:
    """A value valid for ``schema``: required properties only, the simplest of each type."""
    if not isinstance(schema, dict) or depth > 16:
        return hint.text
    if isinstance(schema.get("$ref"), str):
        return _synthesize(_resolve_ref(root, schema["$ref"]), root, hint, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            picked = next((o for o in options if not _is_null(o)), options[0])
            return _synthesize(picked, root, hint, depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        return _synthesize(_merge_all_of(schema, root), root, hint, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "string":
        return _synthesize_string(schema, hint)
    if kind == "integer":
        return math.ceil(_clamp(1 if hint.number is None else round(hint.number), schema))
    if kind == "number":
        return _clamp(1.5 if hint.number is None else hint.number, schema)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        items = schema.get("items", {})
        resolved = (
            _resolve_ref(root, items["$ref"])
            if isinstance(items, dict) and "$ref" in items
            else items
        )
        count = max(int(schema.get("minItems", 0)), 1 if _is_object(resolved) else 0)
        return [_synthesize(items, root, hint, depth + 1) for _ in range(count)]
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        return {
            name: _synthesize(properties.get(name, {"type": "string"}), root, hint, depth + 1)
            for name in required
        }
    return hint.text


def _resolve_ref(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        raise SchemaError(f"JSON schema $ref {ref!r}: only local '#/...' references work.")
    node = root
    for raw_key in ref.lstrip("#").strip("/").split("/"):
        key = raw_key.replace("~1", "/").replace("~0", "~")  # JSON Pointer escapes
        if not key:
            continue
        if not isinstance(node, dict) or key not in node:
            raise SchemaError(f"JSON schema $ref {ref!r} points nowhere in the schema.")
        node = node[key]
    return node


def _merge_all_of(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for sub in schema["allOf"]:
        if isinstance(sub, dict) and "$ref" in sub:
            sub = _resolve_ref(root, sub["$ref"])
        if not isinstance(sub, dict):
            continue
        for key, value in sub.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _is_object(schema: Any) -> bool:
    return isinstance(schema, dict) and (schema.get("type") == "object" or "properties" in schema)


_STRING_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com",
    "uuid": "00000000-0000-0000-0000-000000000000",
}


def _synthesize_string(schema: dict[str, Any], hint: Hint) -> str:
    value = _STRING_FORMATS.get(schema.get("format", ""), hint.text)
    min_length, max_length = schema.get("minLength"), schema.get("maxLength")
    if isinstance(min_length, int) and len(value) < min_length:
        value = value.ljust(min_length, "x")
    if isinstance(max_length, int):
        value = value[:max_length]
    return value


def _clamp(value: float, schema: dict[str, Any]) -> float:
    if isinstance(schema.get("minimum"), (int, float)):
        value = max(value, schema["minimum"])
    if isinstance(schema.get("exclusiveMinimum"), (int, float)):
        value = max(value, schema["exclusiveMinimum"] + 1)
    if isinstance(schema.get("maximum"), (int, float)):
        value = min(value, schema["maximum"])
    if isinstance(schema.get("exclusiveMaximum"), (int, float)):
        value = min(value, schema["exclusiveMaximum"] - 1)
    return value


def hint_from_text(text: str) -> Hint:
    """Strings: the first quoted phrase of ``text``, else its last word; numbers: the
    first number in it."""
    quoted = _QUOTED.search(text)
    words = re.findall(r"[\w'-]+", text)
    if quoted:
        value = next(g for g in quoted.groups() if g is not None)
    else:
        value = words[-1] if words else "emulated"
    number = _NUMBER.search(text)
    return Hint(value, float(number.group()) if number else None)
