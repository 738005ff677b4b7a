"""OpenAI's request and response bodies, mapped onto hostler's jobs and results.

Shared by everything that speaks OpenAI's format: `hostler batch` (the Batch API's JSONL)
and the HTTP gateway. A request body becomes a completion or chat job's fields; a result
becomes the body OpenAI's clients parse.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ._jobs import ChatMessage
from ._results import CompletionResult

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
OPENAI_URLS = (CHAT_URL, COMPLETIONS_URL)

# Fields OpenAI clients send that change nothing here, so refusing them would only break tools.
_HARMLESS = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "logit_bias", "echo"}
# Fields whose meaning hostler cannot honour: better a clear 400 than a silently wrong answer.
_UNSUPPORTED = {"tools", "tool_choice", "functions", "function_call", "response_format", "logprobs", "top_logprobs",
                "best_of", "suffix", "audio", "modalities", "prediction"}  # fmt: skip


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _screen(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        unsupported = sorted(set(data) & _UNSUPPORTED)
        if unsupported:
            raise ValueError(f"not supported by hostler: {', '.join(unsupported)}")
        return {k: v for k, v in data.items() if k not in _HARMLESS}

    @model_validator(mode="after")
    def _one_choice(self) -> _Body:
        if self.n != 1:
            raise ValueError(f"n={self.n} is not supported: hostler returns exactly one choice (n=1)")
        return self

    def sampling(self) -> dict[str, Any]:
        """The body's sampling fields as SamplingParams keywords (unset ones keep hostler's defaults)."""
        fields = self.model_dump(exclude_none=True, exclude={"model", "n", "stream", "stream_options", "prompt",
                                                               "messages", "max_completion_tokens"})  # fmt: skip
        return fields

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class ChatCompletionBody(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def sampling(self) -> dict[str, Any]:
        fields = super().sampling()
        if self.max_completion_tokens is not None:
            fields["max_tokens"] = self.max_completion_tokens
        return fields


class CompletionBody(_Body):
    prompt: str


def parse_body(url: str, body: Any) -> ChatCompletionBody | CompletionBody:
    """The request body for an OpenAI URL; raises ValueError naming what is wrong."""
    if url == CHAT_URL:
        return _validate(ChatCompletionBody, body)
    if url == COMPLETIONS_URL:
        return _validate(CompletionBody, body)
    raise ValueError(f"unknown url {url!r}: use {' or '.join(OPENAI_URLS)}")


def _validate(cls: type[ChatCompletionBody] | type[CompletionBody], body: Any) -> ChatCompletionBody | CompletionBody:
    try:
        parsed: ChatCompletionBody | CompletionBody = cls.model_validate(body)
        return parsed
    except ValidationError as exc:
        raise ValueError(describe_errors(exc)) from None


def describe_errors(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "body"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown field {where!r}")
        else:
            parts.append(f"invalid {where}: {item['msg']}")
    return "; ".join(parts)


def usage_body(result: CompletionResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "total_tokens": result.usage.total_tokens,
    }


def finish_reason(result: CompletionResult) -> str:
    # OpenAI has no "canceled"; a generation stopped early reads as a stop.
    return "length" if result.finish_reason == "length" else "stop"


def response_body(
    kind: Literal["chat", "completion"], result: CompletionResult, request_id: str, created: int | None = None
) -> dict[str, Any]:
    """The non-streamed response body OpenAI returns for a chat or a completion."""
    created = int(time.time()) if created is None else created
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": None,
            "finish_reason": finish_reason(result),
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": finish_reason(result)}
        obj = "text_completion"
    return {
        "id": request_id,
        "object": obj,
        "created": created,
        "model": result.model,
        "choices": [choice],
        "usage": usage_body(result),
    }
