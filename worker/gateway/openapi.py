"""The gateway's OpenAPI document: every endpoint's request body, answers and error statuses.

The handlers read their bodies themselves (so that every refusal is a 400 in OpenAI's shape,
never FastAPI's 422), which leaves FastAPI nothing to describe. This module says it instead:
one Doc per route, the request and answer models (the schemas' own pydantic models where they
exist, loose ones here for the answers that are plain dicts), and the statuses each can answer,
all errors in OpenAI's error shape. `/docs` renders it; a property-based fuzzer
(tests/worker/gateway/test_openapi_fuzz_e2e.py) checks the gateway never answers outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from hostler.schemas import (
    BatchCreateRequest,
    BatchObject,
    BatchPage,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FileDeleted,
    FileObject,
    FilePage,
)
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from .batches import DEFAULT_LIST as BATCHES_DEFAULT_LIST
from .batches import MAX_LIST as BATCHES_MAX_LIST
from .files import MAX_LIST as FILES_MAX_LIST
from .guards import OPEN_PATHS
from .management import LoadRequest
from .shapes import TokenizeRequest

JSON = "application/json"
REF = "#/components/schemas/{model}"

ERROR_DESCRIPTIONS = {
    400: "Invalid request: the message and `param` name what was wrong.",
    401: "Missing or invalid API key (only when the gateway was started with keys).",
    404: "No such model (the message lists those that exist), file or batch.",
    413: "Over a size limit: the request body, an uploaded file, or the files stored together.",
    429: "The model's queue is full; Retry-After says when to try again.",
    503: "Redis unreachable, no host with memory for the model, or its worker died; see Retry-After.",
    504: "The request waited longer than the gateway's --timeout; its job left the queue.",
}


# -- answers that are plain dicts in the handlers: described loosely, extra fields allowed ------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the gateway answers, as OpenAI's SDKs parse it."""

    error: ErrorDetail


class Usage(_Open):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class ChatMessageOut(_Open):
    role: Literal["assistant"]
    content: str | None


class ChatChoice(_Open):
    index: int
    message: ChatMessageOut
    finish_reason: str | None


class ChatCompletion(_Open):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(_Open):
    index: int
    text: str
    finish_reason: str | None


class TextCompletion(_Open):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class Embedding(_Open):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingList(_Open):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class ModelEntry(_Open):
    id: str
    object: Literal["model"]
    owned_by: str
    hosts: list[str] = Field(description="Hosts that have the model on disk.")
    loaded_on: list[str] = Field(description="Hosts it is loaded on now.")


class ModelList(_Open):
    object: Literal["list"]
    data: list[ModelEntry]


class LoadAnswer(_Open):
    object: Literal["model.load"]


class UnloadAnswer(_Open):
    object: Literal["model.unload"]


class TokenCount(_Open):
    object: Literal["tokenize"]
    model: str
    count: int


class Processes(_Open):
    object: Literal["list"]
    data: list[dict[str, Any]]
    queues: dict[str, Any]


class Health(_Open):
    status: Literal["ok", "unavailable"]
    redis: str


class FileUpload(BaseModel):
    """The multipart form of POST /v1/files."""

    file: bytes = Field(description="The JSONL file of requests.", json_schema_extra={"format": "binary"})
    purpose: Literal["batch"] = Field(description="Only 'batch': hostler keeps files to run batches.")


# -- what each route takes and answers ------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    summary: str
    answer: type[BaseModel] | None
    errors: tuple[int, ...]
    body: type[BaseModel] | None = None
    # The 200 answer's other media types: server-sent events, Prometheus text, raw file bytes.
    also: tuple[str, ...] = ()
    multipart: bool = False
    query: tuple[str, ...] = ()


_GENERATE = (400, 404, 413, 429, 503, 504)
_SSE = ("text/event-stream",)

DOCS: dict[tuple[str, str], Doc] = {
    ("post", "/v1/chat/completions"): Doc(
        "A chat completion through the model's chat template; `stream: true` answers server-sent events.",
        ChatCompletion,
        _GENERATE,
        ChatCompletionRequest,
        _SSE,
    ),
    ("post", "/v1/completions"): Doc(
        "A text completion of a prompt; `stream: true` answers server-sent events.",
        TextCompletion,
        _GENERATE,
        CompletionRequest,
        _SSE,
    ),
    ("post", "/v1/embeddings"): Doc(
        "Embedding vectors of one or more inputs.", EmbeddingList, _GENERATE, EmbeddingRequest
    ),
    ("get", "/v1/models"): Doc("Every model on a live host.", ModelList, (503,)),
    ("get", "/v1/models/{model}"): Doc("One model: engine, memory estimate, where it is.", ModelEntry, (404, 503)),
    ("post", "/v1/models/{model}/load"): Doc(
        "Place and load a model (load params, replicas, keep_alive, pinned); answers once it is loaded.",
        LoadAnswer,
        (400, 404, 413, 429, 503, 504),
        LoadRequest,
    ),
    ("post", "/v1/models/{model}/unload"): Doc(
        "Unload a model after the jobs queued before.", UnloadAnswer, (400, 404, 429, 503, 504)
    ),
    ("post", "/v1/tokenize"): Doc(
        "Count the tokens of a text as usage.prompt_tokens counts them.", TokenCount, _GENERATE, TokenizeRequest
    ),
    ("get", "/management/processes"): Doc("Each worker, its state and current job, and the queues.", Processes, (503,)),
    ("get", "/health"): Doc("Whether Redis answers (never needs a key); 503 with the same body when not.", Health, ()),
    ("get", "/metrics"): Doc("Prometheus metrics of the whole cluster.", None, (503,), also=("text/plain",)),
    ("post", "/v1/files"): Doc(
        "Upload a Batch API input file (JSONL), purpose 'batch'.",
        FileObject,
        (400, 413, 503),
        FileUpload,
        multipart=True,
    ),
    ("get", "/v1/files"): Doc("Uploaded files, newest first.", FilePage, (400, 503), query=("after", "limit-files")),
    ("get", "/v1/files/{file_id}"): Doc("A file's metadata.", FileObject, (404, 503)),
    ("delete", "/v1/files/{file_id}"): Doc("Delete a file.", FileDeleted, (404, 503)),
    ("get", "/v1/files/{file_id}/content"): Doc(
        "A file's bytes (a batch's output: JSONL).", None, (404, 503), also=("application/octet-stream",)
    ),
    ("post", "/v1/batches"): Doc(
        "Run an uploaded file's requests as a batch on the queue.",
        BatchObject,
        (400, 404, 413, 503),
        BatchCreateRequest,
    ),
    ("get", "/v1/batches"): Doc("Batches, newest first.", BatchPage, (400, 503), query=("after", "limit-batches")),
    ("get", "/v1/batches/{batch_id}"): Doc(
        "A batch: status, request counts, output and error files.", BatchObject, (404, 503)
    ),
    ("post", "/v1/batches/{batch_id}/cancel"): Doc(
        "Cancel a batch: queued requests never run.", BatchObject, (400, 404, 503)
    ),
}


def _limit(most: int, default: int) -> dict[str, Any]:
    schema = {"type": "integer", "minimum": 1, "maximum": most}
    return {"name": "limit", "in": "query", "required": False, "schema": schema,
            "description": f"How many to answer (default {default})."}  # fmt: skip


_QUERY = {
    "after": {
        "name": "after",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "maxLength": 128},
        "description": "The last id of the previous page.",
    },  # fmt: skip
    "limit-files": _limit(FILES_MAX_LIST, FILES_MAX_LIST),
    "limit-batches": _limit(BATCHES_MAX_LIST, BATCHES_DEFAULT_LIST),
}


def install(app: FastAPI) -> None:
    """Makes app.openapi() answer the document described here (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    models = {ErrorResponse} | {m for d in DOCS.values() for m in (d.answer, d.body) if m is not None}
    refs, defs = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
                                    ref_template=REF)  # fmt: skip
    components = schema.setdefault("components", {})
    components["schemas"] = defs.get("$defs", {})
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            doc = DOCS.get((method, path))
            if doc is None:
                raise LookupError(f"{method.upper()} {path} has no Doc in worker/gateway/openapi.py")
            _describe(operation, path, doc, {m: refs[(m, "validation")] for m in models})
    return schema


def _describe(operation: dict[str, Any], path: str, doc: Doc, refs: dict[type[BaseModel], Any]) -> None:
    operation["summary"] = doc.summary
    operation["parameters"] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in _path_params(path)
    ] + [_QUERY[name] for name in doc.query]
    if doc.body is not None:
        media = "multipart/form-data" if doc.multipart else JSON
        operation["requestBody"] = {"required": True, "content": {media: {"schema": refs[doc.body]}}}
    content: dict[str, Any] = {JSON: {"schema": refs[doc.answer]}} if doc.answer is not None else {}
    for media in doc.also:
        content[media] = {"schema": {"type": "string"}}
    statuses = set(doc.errors)
    if doc.body is not None:
        statuses |= {400, 413}
    if path not in OPEN_PATHS:
        statuses.add(401)
        operation["security"] = [{"bearer": []}]
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    for status in sorted(statuses):
        error = {JSON: {"schema": refs[ErrorResponse]}}
        responses[str(status)] = {"description": ERROR_DESCRIPTIONS[status], "content": error}
    if path == "/health":
        responses["503"] = {"description": "Redis does not answer.", "content": content}
    operation["responses"] = responses


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
