"""pydantic's validation errors in hostler's words, written once for the clients, the gateway,
the worker and the model registry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

# The parts of a location that name no field: pydantic's tag of the union member that failed
# ('stop.list[str]', 'function-after[...]'), a bare type name, FastAPI's 'body'.
_NOT_FIELDS = {"str", "int", "float", "bool", "list", "dict", "body"}


@dataclass(frozen=True)
class FieldError:
    """One complaint of a ValidationError."""

    path: str  # the dotted location as pydantic gives it; '' for the whole input
    field: str  # the same without the parts that name no field ('stop.list[str]' is 'stop')
    kind: str  # pydantic's error type: missing, extra_forbidden, json_invalid, ...
    message: str  # pydantic's message


def field_errors(error: ValidationError | Sequence[Mapping[str, Any]]) -> list[FieldError]:
    """The complaints of a ValidationError (or of its errors(), as FastAPI hands them over)."""
    items = error.errors() if isinstance(error, ValidationError) else error
    found = []
    for item in items:
        loc = [str(part) for part in item.get("loc", ())]
        found.append(
            FieldError(
                path=".".join(loc),
                field=".".join(p for p in loc if not _names_no_field(p)),
                kind=str(item.get("type", "")),
                message=str(item.get("msg", "")),
            )
        )
    return found


def describe_errors(error: ValidationError, *, whole: str = "body", unknown: str = "field") -> str:
    """A validation error as one line naming each bad field (whole: what an empty path means)."""
    parts = []
    for item in field_errors(error):
        where = item.path or whole
        if item.kind == "extra_forbidden":
            parts.append(f"unknown {unknown} {where!r}")
        else:
            parts.append(f"invalid {where}: {item.message}")
    return "; ".join(parts)


def _names_no_field(part: str) -> bool:
    return "[" in part or "-" in part or part in _NOT_FIELDS
