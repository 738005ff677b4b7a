"""Stream events, published as JSON on a job's channel.

Every event has a sequence number starting at 0 so that a client can tell a gap
(pub/sub drops messages across a reconnect) from the end; the last event of a job
is always done or error.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ._embeddings import EmbeddingResult
from ._logprobs import TokenLogprob
from ._results import CompletionResult, LoadResult, TokenCountResult, UnloadResult

JobResult = Annotated[
    CompletionResult | TokenCountResult | EmbeddingResult | LoadResult | UnloadResult,
    Field(discriminator="kind"),
]
RESULT_ADAPTER: TypeAdapter[JobResult] = TypeAdapter(JobResult)


class TokenEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["token"] = "token"
    seq: int = Field(ge=0)
    text: str = Field(description="A piece of text; pieces joined equal the final text.")
    logprobs: list[TokenLogprob] | None = Field(
        None, description="The tokens whose text this piece carries, when the job asked for logprobs."
    )


class DoneEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["done"] = "done"
    seq: int = Field(ge=0)
    result: JobResult


class ErrorEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["error"] = "error"
    seq: int = Field(ge=0)
    code: str = Field(description="A stable machine-readable code, e.g. context_exceeded.")
    message: str = Field(description="What went wrong, for a person.")


StreamEvent = Annotated[TokenEvent | DoneEvent | ErrorEvent, Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[StreamEvent] = TypeAdapter(StreamEvent)


class ErrorCode:
    """The codes an error event or a failed job carries."""

    INVALID_JOB = "invalid_job"
    INVALID_REQUEST = "invalid_request"
    MODEL_NOT_FOUND = "model_not_found"
    LOAD_FAILED = "load_failed"
    CONTEXT_EXCEEDED = "context_exceeded"
    NO_CHAT_TEMPLATE = "no_chat_template"
    EMBEDDINGS_UNSUPPORTED = "embeddings_unsupported"
    TOOLS_UNSUPPORTED = "tools_unsupported"
    WORKER_DIED = "worker_died"
    HOST_DIED = "host_died"
    NO_CAPACITY = "no_capacity"
    MODEL_CRASHING = "model_crashing"
    CANCELED = "canceled"
    CLIENT_GONE = "client_gone"
    EXPIRED = "expired"
    TIMEOUT = "timeout"
    QUEUE_FULL = "queue_full"
    REQUEST_TOO_LARGE = "request_too_large"
    INTERNAL = "internal"
