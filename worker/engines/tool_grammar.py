"""The GBNF grammar a forced tool call is sampled under (tool_choice `required` or a named function).

The grammar spells the call exactly as the template's format wants it (`<tool_call>` blocks or
a bare JSON object), with `name` one of the allowed functions and `arguments` matching that
function's parameter schema, converted by llama-cpp-python's JSON-schema converter. When it is
complete llama.cpp's grammar sampler allows only an end-of-generation token, so the reply is
the call(s) and nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from hostler.schemas import ErrorCode, NamedToolChoice, Tool, ToolChoice

from .protocol import EngineError
from .tool_calls import HERMES_CLOSE, HERMES_OPEN, ToolFormat

# A function without parameters takes an empty object, as OpenAI reads a missing schema.
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
_DEFINITIONS = ("$defs", "definitions")
_LOCAL_REF = re.compile(r"^#/(?:\$defs|definitions)/")
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


class BadToolSchema(EngineError):
    code = ErrorCode.INVALID_REQUEST


def forced_tools(tools: Sequence[Tool], choice: ToolChoice) -> list[Tool] | None:
    """The tools a reply must call one of, or None when the model may answer freely."""
    if choice == "required":
        return list(tools)
    if isinstance(choice, NamedToolChoice):
        return [tool for tool in tools if tool.function.name == choice.function.name]
    return None


def tool_call_grammar(tools: Sequence[Tool], fmt: ToolFormat, *, parallel: bool) -> str:
    """A grammar for a reply that is one call of one of `tools` (several, one after another,
    when parallel and the format has blocks to separate them)."""
    from llama_cpp import llama_grammar  # deferred: only workers sample

    grammars: Any = llama_grammar  # untyped: Any at the boundary
    converter: Any = grammars.SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    literal = converter._format_literal
    calls = []
    for index, tool in enumerate(tools):
        name = tool.function.name
        schema = _namespaced(tool.function.parameters or _NO_PARAMETERS, name)
        try:
            # Each function's $refs resolve against its own schema (under its own url, to its own
            # renamed definitions: one converter names a definition's rule by its bare name).
            resolved = converter.resolve_refs(schema, f"tool-{index}")
            arguments = converter.visit(resolved, f"{name}-arguments")
        except Exception as exc:  # noqa: BLE001 - the converter raises anything from asserts to KeyErrors
            raise BadToolSchema(
                f"tools: the parameters schema of function {name!r} cannot be turned into a grammar "
                f"({type(exc).__name__}: {exc})"
            ) from None
        body = " ".join(
            [
                '"{" space',
                literal('"name"'),
                'space ":" space',
                literal(json.dumps(name)),
                'space "," space',
                literal('"arguments"'),
                'space ":" space',
                arguments,
                '"}"',
            ]
        )
        calls.append(converter._add_rule(f"{name}-call", body))
    call = converter._add_rule("tool-call", " | ".join(calls))
    if fmt == "hermes":
        opening, closing = literal(HERMES_OPEN + "\n"), literal("\n" + HERMES_CLOSE)
        block = converter._add_rule("tool-call-block", f"{opening} {call} {closing}")
        root = f'{block} ("\\n" {block})*' if parallel else block
    else:
        root = call
    converter._add_rule("root", root)
    grammar: str = converter.format_grammar()
    # As client/_grammar.py does for json_schema: the port lets control characters into JSON
    # strings, which a JSON parser refuses; llama.cpp's own converter keeps them out.
    return grammar.replace(_LOOSE_CHAR, _JSON_CHAR)


def _namespaced(schema: Any, prefix: str) -> Any:
    """A copy of schema whose local definitions are named `<prefix>-<name>`, its `#/$defs/...`
    references with them, so that two functions' same-named definitions stay two rules."""
    if isinstance(schema, list):
        return [_namespaced(item, prefix) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DEFINITIONS and isinstance(value, dict):
            out[key] = {f"{prefix}-{name}": _namespaced(sub, prefix) for name, sub in value.items()}
        elif key == "$ref" and isinstance(value, str):
            out[key] = _LOCAL_REF.sub(lambda found: f"{found.group(0)}{prefix}-", value)
        else:
            out[key] = _namespaced(value, prefix)
    return out
