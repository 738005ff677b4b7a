"""The gateway's own OpenAI shapes: the tokenize request, JSON body parsing, stream chunks.

The chat and completion request models and whole response bodies are hostler.schemas'
(schemas/_openai.py), shared with `hostler batch`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from hostler.schemas import (
    MAX_PROMPT_CHARS,
    CompletionResult,
    ToolCall,
    usage_body,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import describe_validation


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=128)
    content: str = Field(max_length=MAX_PROMPT_CHARS, description="Text to count the tokens of.")


def parse(model_cls: type[Any], body: bytes) -> Any:
    """Validates a JSON body against a request model; a 400 naming the field otherwise."""
    try:
        return model_cls.model_validate_json(body)
    except ValidationError as exc:
        raise describe_validation(exc.errors(include_url=False)) from None


# -- responses ---------------------------------------------------------------------
# Whole (non-streamed) bodies are hostler.schemas.response_body, shared with `hostler batch`.


class Ids:
    """The id and creation time one response shares across its chunks."""

    def __init__(self, prefix: str, model: str) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model


def chat_chunk(ids: Ids, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {
        "id": ids.id,
        "object": "chat.completion.chunk",
        "created": ids.created,
        "model": ids.model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
    }


def tool_call_deltas(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Each call as OpenAI streams one: a delta naming it (index, id, function name), then one
    with its arguments. The worker parses calls from the whole reply, so they come at its end."""
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        opening = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.function.name, "arguments": ""},
        }
        deltas.append({"tool_calls": [opening]})
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": call.function.arguments}}]})
    return deltas


def text_chunk(ids: Ids, text: str, reason: str | None = None) -> dict[str, Any]:
    return {
        "id": ids.id,
        "object": "text_completion",
        "created": ids.created,
        "model": ids.model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
    }


def usage_chunk(ids: Ids, kind: str, result: CompletionResult) -> dict[str, Any]:
    """The last chunk of a stream with stream_options.include_usage: no choices, the usage."""
    return {
        "id": ids.id,
        "object": kind,
        "created": ids.created,
        "model": ids.model,
        "choices": [],
        "usage": usage_body(result),
    }
