"""Job payloads: the JSON an rq job on a model queue carries as its keyword arguments.

Every kind is validated again by the worker, because anyone with write access to Redis
can put anything on a queue.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator, model_validator

from ._embeddings import MAX_EMBEDDING_DIMENSIONS, MAX_EMBEDDING_INPUTS, EmbeddingInput
from ._params import LoadParams, SamplingParams
from ._tools import MAX_TOOL_CALL_ID_CHARS, MAX_TOOLS, Tool, ToolCall, ToolChoice, check_tool_choice, check_unique_names

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$"
MAX_PROMPT_CHARS = 4_000_000
# The largest job payload (its JSON) a client may send or a worker will decode.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
# Longest per-job generation time and start deadline a job may ask for (a day).
MAX_JOB_SECONDS = 86_400.0

Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")

ModelId = Annotated[
    str,
    Field(
        pattern=MODEL_ID_PATTERN,
        description="A model name (letters, digits, '.', '_', '-'); never a path.",
    ),
]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="The text; may be null only for an assistant's tool calls."
    )
    tool_calls: list[ToolCall] | None = Field(
        None, max_length=MAX_TOOLS, description="The calls an assistant message made (role assistant only)."
    )
    tool_call_id: str | None = Field(
        None, max_length=MAX_TOOL_CALL_ID_CHARS, description="The call a tool message answers (role tool only)."
    )

    @model_validator(mode="after")
    def _fits_its_role(self) -> ChatMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("content is required (it may be null only in an assistant message with tool_calls)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"tool_calls belong to assistant messages, not to a {self.role} message")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError(f"tool_call_id belongs to tool messages, not to a {self.role} message")
        return self


class _JobBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelId
    stream: bool = Field(False, description="Publish each generated piece as a token event.")
    watched: bool = Field(
        False,
        description="A client waits for this job and keeps its waiting key alive; once the key "
        "expires the job is canceled instead of run.",
    )
    start_within_s: float | None = Field(
        None, gt=0, le=MAX_JOB_SECONDS, description="A job not started this long after enqueue expires."
    )


class CompletionJob(_JobBase):
    kind: Literal["completion"] = "completion"
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    params: SamplingParams = Field(default_factory=SamplingParams)
    timeout_s: float | None = Field(
        None, gt=0, le=MAX_JOB_SECONDS, description="Longest generation time; past it the job fails."
    )


class ChatJob(_JobBase):
    kind: Literal["chat"] = "chat"
    messages: list[ChatMessage] = Field(min_length=1, max_length=10_000)
    params: SamplingParams = Field(default_factory=SamplingParams)
    timeout_s: float | None = Field(
        None, gt=0, le=MAX_JOB_SECONDS, description="Longest generation time; past it the job fails."
    )
    tools: list[Tool] | None = Field(
        None, max_length=MAX_TOOLS, description="Functions the model may call, rendered by its chat template."
    )
    tool_choice: ToolChoice | None = Field(
        None,
        description="none, auto (the default with tools), required (some call), or the function to call; "
        "required and a named function constrain the reply to a call while sampling.",
    )
    parallel_tool_calls: bool = Field(True, description="Whether one reply may hold several calls.")

    @field_validator("tools")
    @classmethod
    def _unique_names(cls, tools: list[Tool] | None) -> list[Tool] | None:
        return check_unique_names(tools)

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, choice: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        return check_tool_choice(choice, info.data.get("tools"))

    def effective_tool_choice(self) -> ToolChoice:
        """OpenAI's default: auto when tools are given, none otherwise."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"


class TokenCountJob(_JobBase):
    kind: Literal["token_count"] = "token_count"
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class EmbeddingJob(_JobBase):
    kind: Literal["embedding"] = "embedding"
    inputs: list[EmbeddingInput] = Field(
        min_length=1, max_length=MAX_EMBEDDING_INPUTS, description="Texts, or token ids, to embed; one vector each."
    )
    dimensions: int | None = Field(
        None,
        ge=1,
        le=MAX_EMBEDDING_DIMENSIONS,
        description="Keep the first N dimensions of each vector, normalised again; None keeps the model's size.",
    )


class LoadJob(_JobBase):
    kind: Literal["load"] = "load"
    params: LoadParams = Field(default_factory=LoadParams)


class UnloadJob(_JobBase):
    kind: Literal["unload"] = "unload"


Job = Annotated[
    CompletionJob | ChatJob | TokenCountJob | EmbeddingJob | LoadJob | UnloadJob,
    Field(discriminator="kind"),
]
JOB_ADAPTER: TypeAdapter[Job] = TypeAdapter(Job)

JobKind = Literal["completion", "chat", "token_count", "embedding", "load", "unload"]


class Lease(BaseModel):
    """What the janitor watches for a queued job: its waiting key, its start deadline, or both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelId
    queue_key: str
    waiting: bool = False
    start_by: bool = False


# rq shows this as the job's function; no worker ever imports it, so a plain rq
# worker pointed at a hostler queue fails these jobs instead of running anything.
RQ_FUNC_PREFIX = "hostler.job."


def rq_func_name(kind: str) -> str:
    return RQ_FUNC_PREFIX + kind
