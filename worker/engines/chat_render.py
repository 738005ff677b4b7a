"""Chat messages and tools as chat templates read them (Hugging Face's conventions).

Templates are written against transformers' `apply_chat_template`: messages are plain dicts
holding only the keys a message has, an assistant's tool calls carry their arguments as an
object (Qwen's and Hermes' templates print them with `tojson`; OpenAI sends a JSON text),
and tools are OpenAI's `{"type": "function", "function": {...}}` objects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hostler.schemas import ChatMessage, Tool, ToolCall


def template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    return [_message(message) for message in messages]


def template_tools(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    return [tool.model_dump(mode="json", exclude_none=True) for tool in tools]


def template_reads_tools(template: str) -> bool:
    """Whether a Jinja chat template ever reads the `tools` variable (else it cannot show them)."""
    import jinja2  # deferred: only workers render templates
    from jinja2 import meta

    try:
        parsed = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError:
        return False
    return "tools" in meta.find_undeclared_variables(parsed)


def _message(message: ChatMessage) -> dict[str, Any]:
    # A null content (an assistant's tool calls) renders as nothing, not as "None".
    out: dict[str, Any] = {"role": message.role, "content": message.content or ""}
    if message.tool_calls:
        out["tool_calls"] = [_call(call) for call in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _call(call: ToolCall) -> dict[str, Any]:
    try:
        arguments: Any = json.loads(call.function.arguments)
    except ValueError:
        arguments = call.function.arguments
    return {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}
