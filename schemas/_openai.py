"""OpenAI's request and response bodies, mapped onto hostler's jobs and results.

Shared by everything that speaks OpenAI's format: `hostler batch` (the Batch API's JSONL)
and the HTTP gateway. Requests are validated strictly (a string where a number belongs is
refused, not coerced) and unknown fields are refused by name, as OpenAI does. Fields of
OpenAI's API that hostler cannot honour (n > 1, logit_bias, ...) are accepted only at their
neutral value. response_format (json_object, json_schema) becomes SamplingParams.json_schema,
logprobs/top_logprobs (chat) and logprobs (completions) SamplingParams.logprobs. The bounds
are SamplingParams' bounds, so nothing a worker would refuse gets onto a queue. A result
becomes the body OpenAI's clients parse.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ._jobs import MAX_PROMPT_CHARS
from ._logprobs import MAX_TOP_LOGPROBS, chat_logprobs, completion_logprobs
from ._openai_embeddings import EMBEDDINGS_URL
from ._params import MAX_STOP_SEQUENCES, SamplingParams, StopString, sampling_bounds
from ._results import CompletionResult
from ._tools import MAX_TOOL_CALL_ID_CHARS, MAX_TOOLS, Tool, ToolChoice, check_tool_choice, check_unique_names
from ._validation import describe_errors

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
# Every url `hostler batch` runs; /v1/embeddings bodies are _openai_embeddings'.
OPENAI_URLS = (CHAT_URL, COMPLETIONS_URL, EMBEDDINGS_URL)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = Field(False, description="Send a last chunk with the usage before [DONE].")


class JsonSchemaFormat(BaseModel):
    """response_format's json_schema: the schema the reply must validate against."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, description="The schema's name (OpenAI requires one).")
    description: str | None = Field(None, max_length=100_000)
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="A JSON schema; absent: any JSON object.")
    strict: bool | None = Field(None, description="Accepted; the schema is always enforced while sampling.")


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only with it")
        return self

    def schema_for_sampling(self) -> dict[str, Any] | None:
        """The JSON schema the worker enforces; None for plain text."""
        if self.type == "json_object":
            return dict(ANY_JSON_OBJECT)
        if self.json_schema is not None:
            return self.json_schema.schema_ if self.json_schema.schema_ is not None else dict(ANY_JSON_OBJECT)
        return None


# response_format json_object: the reply is some JSON object.
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


class _GenerationRequest(BaseModel):
    """What chat and text completions share: the model, sampling, streaming."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=128, description="A hostler model id.")
    # SamplingParams' bounds, read from it.
    max_tokens: int | None = Field(None, **sampling_bounds("max_tokens"))
    temperature: float | None = Field(None, **sampling_bounds("temperature"))
    top_p: float | None = Field(None, **sampling_bounds("top_p"))
    top_k: int | None = Field(None, description="llama.cpp extra.", **sampling_bounds("top_k"))
    min_p: float | None = Field(None, description="llama.cpp extra.", **sampling_bounds("min_p"))
    repeat_penalty: float | None = Field(None, description="llama.cpp extra.", **sampling_bounds("repeat_penalty"))
    presence_penalty: float | None = Field(None, **sampling_bounds("presence_penalty"))
    frequency_penalty: float | None = Field(None, **sampling_bounds("frequency_penalty"))
    seed: int | None = Field(None, **sampling_bounds("seed"))
    stop: StopString | list[StopString] | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    response_format: ResponseFormat | None = Field(None, description="text, json_object or json_schema.")
    grammar: str | None = Field(None, description="llama.cpp extra: a GBNF grammar the reply must match.")
    n: int = Field(1, description="Choices to generate; hostler makes exactly one.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Accepted and ignored: they change nothing about what is generated.
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    # Accepted only at their neutral value (checked below).
    logit_bias: Any = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"n={value} is not supported: hostler generates one choice per request (n=1)")
        return value

    @model_validator(mode="after")
    def _neutral(self) -> _GenerationRequest:
        if self.logit_bias not in (None, {}):
            raise ValueError("logit_bias is not supported by hostler; leave it unset")
        return self

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters for hostler's client; unset ones keep the model's defaults."""
        params = {
            name: value for name in SamplingParams.model_fields if (value := getattr(self, name, None)) is not None
        }
        # Each kind spells logprobs its own way (see the subclasses).
        params.pop("logprobs", None)
        if self.response_format is not None and (schema := self.response_format.schema_for_sampling()) is not None:
            params["json_schema"] = schema
        return params


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class FunctionCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    name: str = Field(max_length=256)
    arguments: str = Field(max_length=MAX_PROMPT_CHARS, description="The call's arguments as a JSON text.")


class ToolCallIn(BaseModel):
    """A call an earlier assistant message made, as an SDK sends it back."""

    model_config = ConfigDict(extra="ignore", strict=True)

    id: str = Field(min_length=1, max_length=MAX_TOOL_CALL_ID_CHARS)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    """One message; extra fields an SDK echoes back (refusal, annotations, ...) are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(None, max_length=MAX_PROMPT_CHARS)
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(None, max_length=MAX_TOOL_CALL_ID_CHARS)

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessageIn:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"tool_calls belong to assistant messages, not to a {self.role} message")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError(f"tool_call_id belongs to tool messages, not to a {self.role} message")
        return self

    def as_hostler(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        # OpenAI's newer name for the system role; chat templates know only 'system'.
        role = "system" if self.role == "developer" else self.role
        message: dict[str, Any] = {"role": role, "content": content or ""}
        if self.tool_calls:
            # An assistant turn that only called tools has no text: null, as OpenAI sends it.
            message["content"] = content or None
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=10_000)
    max_completion_tokens: int | None = Field(
        None, description="OpenAI's newer max_tokens.", **sampling_bounds("max_tokens")
    )
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS, description="Functions the model may call.")
    tool_choice: ToolChoice | None = Field(
        None, description="none, auto (the default with tools), required, or a function: {type, function: {name}}."
    )
    parallel_tool_calls: bool | None = Field(None, description="Whether one reply may hold several calls.")
    logprobs: bool | None = Field(None, description="Return the log probability of each token of the reply.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="With logprobs: the most likely alternatives per token."
    )

    @model_validator(mode="after")
    def _chat_neutral(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def sampling(self) -> dict[str, Any]:
        params = super().sampling()
        if self.max_completion_tokens is not None:
            params["max_tokens"] = self.max_completion_tokens
        if self.logprobs:
            params["logprobs"] = self.top_logprobs or 0
        return params

    @field_validator("tools")
    @classmethod
    def _unique_tool_names(cls, tools: list[Tool] | None) -> list[Tool] | None:
        return check_unique_names(tools)

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, choice: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        return check_tool_choice(choice, info.data.get("tools"))

    def hostler_messages(self) -> list[dict[str, Any]]:
        return [message.as_hostler() for message in self.messages]

    def tool_options(self) -> dict[str, Any]:
        """The tools keywords of hostler's chat (tools, tool_choice, parallel_tool_calls) that are set."""
        options: dict[str, Any] = {}
        if self.tools:
            options["tools"] = self.tools
        if self.tool_choice is not None:
            options["tool_choice"] = self.tool_choice
        if self.parallel_tool_calls is not None:
            options["parallel_tool_calls"] = self.parallel_tool_calls
        return options


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] = Field(max_length=MAX_PROMPT_CHARS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=1)
    logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="Log probabilities of the most likely tokens at each position."
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt: hostler takes one prompt per request (a string, or a list of one string)")
        if self.echo:
            raise ValueError("echo is not supported by hostler; leave it unset")
        if self.suffix:
            raise ValueError("suffix is not supported by hostler; leave it unset")
        return self

    def text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt

    def sampling(self) -> dict[str, Any]:
        params = super().sampling()
        if self.logprobs is not None:
            params["logprobs"] = self.logprobs
        return params


def parse_body(url: str, body: Any) -> ChatCompletionRequest | CompletionRequest:
    """The request body (already parsed JSON) for an OpenAI URL; raises ValueError naming what is wrong."""
    if url == CHAT_URL:
        return _validate(ChatCompletionRequest, body)
    if url == COMPLETIONS_URL:
        return _validate(CompletionRequest, body)
    raise ValueError(f"unknown url {url!r}: use {' or '.join(OPENAI_URLS)}")


def _validate(
    cls: type[ChatCompletionRequest] | type[CompletionRequest], body: Any
) -> ChatCompletionRequest | CompletionRequest:
    try:
        parsed: ChatCompletionRequest | CompletionRequest = cls.model_validate(body)
        return parsed
    except ValidationError as exc:
        raise ValueError(describe_errors(exc)) from None


def usage_body(result: CompletionResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "total_tokens": result.usage.total_tokens,
    }


def finish_reason(result: CompletionResult) -> str:
    # OpenAI has no "canceled"; a generation stopped early reads as a stop.
    return result.finish_reason if result.finish_reason in ("length", "tool_calls") else "stop"


def chat_message(result: CompletionResult) -> dict[str, Any]:
    """The assistant message of a chat result; with tool calls and no other text its content is null."""
    if not result.tool_calls:
        return {"role": "assistant", "content": result.text}
    return {
        "role": "assistant",
        "content": result.text if result.text.strip() else None,
        "tool_calls": [call.model_dump(mode="json") for call in result.tool_calls],
    }


def response_body(
    kind: Literal["chat", "completion"], result: CompletionResult, request_id: str, created: int | None = None
) -> dict[str, Any]:
    """The non-streamed response body OpenAI returns for a chat or a completion."""
    created = int(time.time()) if created is None else created
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": chat_message(result),
            "logprobs": chat_logprobs(result.logprobs),
            "finish_reason": finish_reason(result),
        }
        obj = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": result.text,
            "logprobs": completion_logprobs(result.logprobs),
            "finish_reason": finish_reason(result),
        }
        obj = "text_completion"
    return {
        "id": request_id,
        "object": obj,
        "created": created,
        "model": result.model,
        "choices": [choice],
        "usage": usage_body(result),
    }
