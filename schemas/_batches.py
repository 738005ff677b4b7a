"""The Batch API's objects over HTTP: files, batches and their states, in OpenAI's shapes.

They are the wire contract between gateways as well as the HTTP answers: any gateway stores a
batch as a BatchObject in Redis, and any other gateway reads it back, serves it, or takes over
running it. request_counts and usage are stored only once a batch ends; while it runs they are
counted from its output and error hashes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
# A batch in one of these has stopped for good; the others are some gateway's to run.
FINAL_STATUSES: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
FilePurpose = Literal["batch", "batch_output"]
COMPLETION_WINDOW = "24h"
COMPLETION_WINDOW_S = 24 * 3600
MAX_METADATA_PAIRS = 16
MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class FileObject(BaseModel):
    """A stored file (its bytes are kept apart): an uploaded batch input, or a batch's output."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="file-... ; the id to fetch, read or delete it by.")
    object: Literal["file"] = "file"
    bytes: int = Field(ge=0, description="Size of the content.")
    created_at: int = Field(description="Unix time of the upload.")
    filename: str = Field(description="The name it was uploaded with.")
    purpose: FilePurpose = Field(description="batch: an input; batch_output: a batch's output or error file.")
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = Field(None, description="Unix time it is deleted; None: kept until deleted.")
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class RequestCounts(BaseModel):
    total: int = Field(ge=0, description="Lines of the input file that are requests.")
    completed: int = Field(ge=0, description="Requests with a line in the output file.")
    failed: int = Field(ge=0, description="Requests with a line in the error file.")


class BatchLineError(BaseModel):
    """Why a batch could not start (missing input file, too many lines, ...)."""

    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchLineError] = Field(default_factory=list)


class TokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int = Field(0, ge=0, description="Prompt tokens of the requests that ran.")
    input_tokens_details: TokensDetails = Field(default_factory=TokensDetails)
    output_tokens: int = Field(0, ge=0, description="Generated tokens.")
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = Field(0, ge=0)


class BatchObject(BaseModel):
    """One batch, as stored in Redis and as GET /v1/batches/{id} answers it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="batch_... ; its jobs' ids start with it.")
    object: Literal["batch"] = "batch"
    endpoint: str = Field(description="The URL every line's request goes to.")
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str = COMPLETION_WINDOW
    status: BatchStatus = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = Field(None, description="Requests not done by then are canceled; the batch expires.")
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=lambda: RequestCounts(total=0, completed=0, failed=0))
    metadata: dict[str, str] | None = None
    usage: BatchUsage | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


class BatchCreateRequest(BaseModel):
    """The body of POST /v1/batches."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input_file_id: str = Field(min_length=1, max_length=128, description="An uploaded file with purpose 'batch'.")
    endpoint: str = Field(
        min_length=1, max_length=64, description="/v1/chat/completions, /v1/completions or /v1/embeddings."
    )
    completion_window: Literal["24h"] = Field(description="Only '24h', as OpenAI.")
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        None, max_length=MAX_METADATA_PAIRS, description="Up to 16 pairs, kept with the batch."
    )


class BatchPage(BaseModel):
    """A cursor page, newest first: pass last_id as `after` for the next one while has_more."""

    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FilePage(BaseModel):
    """Uploaded files, newest first."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
