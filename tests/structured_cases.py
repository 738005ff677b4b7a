"""JSON schemas for structured-output tests: each one bounds its output (string lengths, item
counts), so even a random model's constrained reply ends within max_tokens, and together they
cover what llama.cpp's converter turns into a grammar (objects, optional and nested properties,
arrays, enums, patterns, formats, unions, numbers)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 10},
            "age": {"type": "integer"},
            "nick": {"type": "string", "maxLength": 4},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 4},
    {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
        "required": ["color", "ok"],
        "additionalProperties": False,
    },
    {"type": "string", "pattern": "^[a-z]{2,6}$"},
    {
        "type": "object",
        "properties": {
            "point": {
                "type": "object",
                "properties": {"x": {"type": "integer"}, "y": {"type": "number"}},
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        },
        "required": ["point"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3}},
        "required": ["tags"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"when": {"type": "string", "format": "date"}, "kind": {"const": "event"}},
        "required": ["when", "kind"],
        "additionalProperties": False,
    },
    {"anyOf": [{"type": "integer"}, {"type": "null"}]},
]

# Enough for the longest reply any schema above allows (every character a \uXXXX escape of byte tokens).
MAX_TOKENS = 600


def check(text: str, schema: dict[str, Any]) -> Any:
    """The reply parsed as JSON (strictly: no control characters in strings) and validated."""
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value
