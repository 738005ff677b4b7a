"""OpenAI Batch API files run against the queue, resumable after a crash.

Each valid input line becomes one batch-priority job whose id is derived from the batch id
and the line's custom_id. Running the same file again therefore finds the jobs already
queued or finished instead of enqueueing them twice, and lines already in the output file
are skipped. Output is appended one whole line per write, so an interrupted run leaves a
file of whole lines (a torn last line, from a kill mid-write, is dropped on the next run).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostler.schemas import (
    CHAT_URL,
    EMBEDDINGS_URL,
    ChatCompletionRequest,
    CompletionRequest,
    CompletionResult,
    EmbeddingRequest,
    EmbeddingResult,
    ErrorCode,
    SamplingParams,
    describe_errors,
    embedding_body,
    parse_body,
    parse_embedding_body,
    response_body,
)
from pydantic import ValidationError

from . import _reads as reads
from ._async import AsyncClient
from ._async_handle import AsyncJobHandle
from ._errors import HostlerError, InvalidRequest, JobFailed, ModelNotFound, QueueFull, Timeout
from ._grammar import check_structured
from ._progress import Progress

# A batch's bookkeeping in Redis outlives its jobs' results (kept an hour) by a day.
BATCH_TTL_S = 25 * 3600
MAX_CUSTOM_ID_CHARS = 512


Outcome = CompletionResult | EmbeddingResult | JobFailed


@dataclass(frozen=True)
class Request:
    """One valid input line."""

    line: int
    custom_id: str
    url: str
    body: ChatCompletionRequest | CompletionRequest | EmbeddingRequest
    model: str


@dataclass(frozen=True)
class BadLine:
    """One input line that cannot run, and why."""

    line: int
    custom_id: str | None
    message: str
    code: str = ErrorCode.INVALID_REQUEST

    def record(self) -> dict[str, Any]:
        return {"line": self.line, "custom_id": self.custom_id, "error": {"code": self.code, "message": self.message}}


def batch_id_of(data: bytes) -> str:
    """The same input file is the same batch, whoever runs it and however often."""
    return "batch_" + hashlib.sha256(data).hexdigest()[:20]


def job_id_for(batch_id: str, custom_id: str) -> str:
    # custom_id may hold any characters; a job id is a Redis key part, so it is hashed.
    return f"{batch_id}-{hashlib.sha256(custom_id.encode()).hexdigest()[:24]}"


def parse_lines(lines: Iterable[str], model: str | None = None) -> tuple[list[Request], list[BadLine]]:
    """Valid requests and bad lines (numbered from 1); model, when given, replaces each body's."""
    requests: list[Request] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            request = _parse_line(number, raw, model)
        except ValueError as exc:
            bad.append(BadLine(number, _custom_id_of(raw), str(exc)))
            continue
        first = seen.setdefault(request.custom_id, number)
        if first != number:
            bad.append(
                BadLine(number, request.custom_id, f"duplicate custom_id {request.custom_id!r} (first on line {first})")
            )
            continue
        requests.append(request)
    return requests, bad


def _parse_line(number: int, raw: str, model: str | None) -> Request:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("a line must be a JSON object")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise ValueError("missing custom_id (a non-empty string)")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise ValueError(f"custom_id is longer than {MAX_CUSTOM_ID_CHARS} characters")
    method = data.get("method", "POST")
    if method != "POST":
        raise ValueError(f"invalid method {method!r}: only POST")
    url = data.get("url")
    body = data.get("body")
    if isinstance(body, dict) and model is not None:
        body = {**body, "model": model}
    if url == EMBEDDINGS_URL:
        embedding = parse_embedding_body(body)
        return Request(number, custom_id, url, embedding, embedding.model)
    parsed = parse_body(url if isinstance(url, str) else repr(url), body)
    try:
        # A schema or grammar llama.cpp would refuse is a bad line, named, before anything is queued.
        check_structured(SamplingParams(**parsed.sampling()))
    except ValidationError as exc:
        raise ValueError(describe_errors(exc)) from None
    return Request(number, custom_id, str(url), parsed, parsed.model)


def _custom_id_of(raw: str) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    value = data.get("custom_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def read_done(output: Path, key: str = "custom_id") -> set[str]:
    """Ids (custom_ids) already in the output; drops a torn last line left by a kill mid-write."""
    if not output.exists():
        return set()
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with output.open("r+b") as handle:
            handle.truncate(keep)
        data = data[:keep]
    done = set()
    for line in data.decode().splitlines():
        if line.strip():
            done.add(json.loads(line)[key])
    return done


# A failed request's HTTP status in its output line, as the endpoint would have answered it.
_FAILED_STATUS = {
    ErrorCode.CONTEXT_EXCEEDED: 400,
    ErrorCode.INVALID_JOB: 400,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.MODEL_NOT_FOUND: 404,
}


def output_record(request: Request, job_id: str, outcome: Outcome) -> dict[str, Any]:
    """One output line in the Batch API's shape."""
    if isinstance(outcome, CompletionResult | EmbeddingResult):
        if isinstance(outcome, EmbeddingResult):
            encoding = request.body.encoding_format if isinstance(request.body, EmbeddingRequest) else "float"
            body = embedding_body(outcome, encoding)
        else:
            chat = request.url == CHAT_URL
            request_id = f"{'chatcmpl' if chat else 'cmpl'}-{job_id}"
            body = response_body("chat" if chat else "completion", outcome, request_id)
        return {
            "id": f"batch_req_{job_id}",
            "custom_id": request.custom_id,
            "response": {"status_code": 200, "request_id": job_id, "body": body},
            "error": None,
        }
    status = _FAILED_STATUS.get(outcome.code, 500)
    error = {"code": outcome.code, "message": outcome.message}
    return {
        "id": f"batch_req_{job_id}",
        "custom_id": request.custom_id,
        "response": {"status_code": status, "request_id": job_id, "body": {"error": {**error, "type": "job_failed"}}},
        "error": error,
    }


@dataclass
class BatchSummary:
    batch_id: str
    lines: int
    bad: int
    skipped: int
    finished: int = 0
    failed: int = 0
    unfinished: int = 0
    tokens: int = 0
    seconds: float = 0.0
    bad_lines: list[BadLine] = field(default_factory=list)

    def text(self) -> str:
        parts = [
            f"{self.batch_id}: {self.lines} lines",
            f"{self.finished} finished",
            f"{self.failed} failed",
            f"{self.skipped} already done",
            f"{self.bad} bad",
        ]
        if self.unfinished:
            parts.append(f"{self.unfinished} unfinished (run again to pick them up)")
        rate = self.tokens / self.seconds if self.seconds else 0.0
        return ", ".join(parts) + f"; {self.tokens} tokens in {self.seconds:.1f} s ({rate:.1f} tok/s)"


async def run_batch(
    client: AsyncClient,
    input_path: Path,
    output: Path,
    *,
    errors: Path | None = None,
    model: str | None = None,
    max_in_flight: int = 64,
    timeout: float = 24 * 3600.0,
    progress: Progress | None = None,
) -> BatchSummary:
    """Runs every valid line of an OpenAI Batch input file; appends results to output."""
    data = input_path.read_bytes()
    batch_id = batch_id_of(data + (model or "").encode())
    requests, bad = await read_requests(client, data.decode(errors="replace"), model)
    if errors is not None:
        errors.write_text("".join(json.dumps(b.record()) + "\n" for b in bad))
    done = read_done(output)
    todo = [r for r in requests if r.custom_id not in done]
    summary = BatchSummary(batch_id, len(requests) + len(bad), len(bad), len(requests) - len(todo), bad_lines=bad)
    await _register(client, batch_id, input_path, len(requests))
    if progress is not None:
        progress.total = len(todo)
    started = time.monotonic()
    deadline = started + timeout
    with output.open("a", encoding="utf-8") as out:

        async def append(request: Request, job_id: str, outcome: Outcome) -> None:
            out.write(json.dumps(output_record(request, job_id, outcome)) + "\n")
            out.flush()

        try:
            await run_requests(client, batch_id, todo, append, summary, max_in_flight, deadline, progress)
        finally:
            summary.seconds = time.monotonic() - started
            summary.unfinished = len(todo) - summary.finished - summary.failed
            if progress is not None:
                progress.finish()
    return summary


async def run_requests(
    client: AsyncClient,
    batch_id: str,
    todo: Iterable[Request],
    write: Callable[[Request, str, Outcome], Awaitable[None]],
    summary: BatchSummary,
    max_in_flight: int,
    deadline: float,
    progress: Progress | None = None,
) -> None:
    """Runs requests as batch jobs, at most max_in_flight at a time, and hands each outcome to
    `write` as it ends (`hostler batch run` appends to a file, the gateway's Batch API to Redis).

    Job ids come from batch_id and each custom_id, so running the same requests again re-attaches
    to their jobs instead of queuing them twice. A request still unfinished at the deadline is
    not written. `todo` is read lazily: an iterator that stops early stops the submitting.
    """
    pending = iter(todo)
    running: set[asyncio.Task[tuple[Request, str, Outcome | None]]] = set()

    def start_more() -> None:
        for request in pending:
            running.add(asyncio.create_task(_one(client, batch_id, request, deadline)))
            if len(running) >= max_in_flight:
                return

    start_more()
    try:
        while running:
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                running.discard(task)
                request, job_id, outcome = task.result()
                if outcome is None:
                    continue  # timed out: still queued or running, a later run picks it up
                await write(request, job_id, outcome)
                tokens = outcome.usage.completion_tokens if isinstance(outcome, CompletionResult) else 0
                summary.tokens += tokens
                if isinstance(outcome, JobFailed):
                    summary.failed += 1
                else:
                    summary.finished += 1
                if progress is not None:
                    failed = isinstance(outcome, JobFailed)
                    progress.update(done=int(not failed), failed=int(failed), tokens=tokens)
            start_more()
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


async def _one(
    client: AsyncClient, batch_id: str, request: Request, deadline: float
) -> tuple[Request, str, Outcome | None]:
    job_id = job_id_for(batch_id, request.custom_id)
    try:
        handle = await _submit(client, request, job_id, deadline)
    except (InvalidRequest, ModelNotFound) as refused:
        # The line's fault, found only now (a model removed since the run began): one failed line.
        code = ErrorCode.MODEL_NOT_FOUND if isinstance(refused, ModelNotFound) else ErrorCode.INVALID_REQUEST
        return request, job_id, JobFailed(job_id, code, str(refused))
    except QueueFull:
        return request, job_id, None  # full until the deadline: unfinished, a later run picks it up
    async with client.connection.pipeline(transaction=False) as pipe:
        pipe.hset(client.keys.batch_jobs(batch_id), request.custom_id, job_id)
        pipe.expire(client.keys.batch_jobs(batch_id), BATCH_TTL_S)
        await pipe.execute()
    try:
        result = await handle.result(timeout=max(1.0, deadline - time.monotonic()))
    except JobFailed as failed:
        return request, job_id, failed
    except Timeout:
        return request, job_id, None
    if not isinstance(result, CompletionResult | EmbeddingResult):
        raise HostlerError(f"job {job_id} returned a {result.kind} result, not a completion or embeddings")
    return request, job_id, result


async def _submit(client: AsyncClient, request: Request, job_id: str, deadline: float) -> AsyncJobHandle:
    body = request.body
    # A full queue is waited out until the run's deadline.
    if isinstance(body, EmbeddingRequest):
        room = max(0.0, deadline - time.monotonic())
        call = client._embedding_submission(body.model, body.inputs(), body.dimensions, job_id=job_id, room_s=room)
        await client._do(client._submit(call, job_id))
        return AsyncJobHandle(client, job_id, body.model)
    prompt = body.text() if isinstance(body, CompletionRequest) else None
    messages = body.hostler_messages() if isinstance(body, ChatCompletionRequest) else None
    tools = body.tool_options() if isinstance(body, ChatCompletionRequest) else {}
    # A full queue is waited out until the run's deadline.
    room_s = max(0.0, deadline - time.monotonic())
    return await client.submit(
        request.model, prompt, messages=messages, job_id=job_id, wait_when_full=room_s, **tools, **body.sampling()
    )


async def read_requests(
    client: AsyncClient, text: str, model: str | None = None, *, endpoint: str | None = None
) -> tuple[list[Request], list[BadLine]]:
    """The requests of a Batch API input that can run, and its bad lines in line order: not JSON,
    an unknown url (or one other than `endpoint`, when given), an invalid body, a model no live
    host has. model, when given, replaces each body's."""
    requests, bad = parse_lines(text.splitlines(), model)
    if endpoint is not None:
        elsewhere = [r for r in requests if r.url != endpoint]
        bad += [
            BadLine(r.line, r.custom_id, f"url {r.url!r} is not the batch's endpoint {endpoint!r}") for r in elsewhere
        ]
        requests = [r for r in requests if r.url == endpoint]
    requests, unknown = await _known_models(client, requests)
    return requests, sorted([*bad, *unknown], key=lambda b: b.line)


async def _known_models(client: AsyncClient, requests: list[Request]) -> tuple[list[Request], list[BadLine]]:
    """Lines naming a model no live host has are bad lines, not failures mid-run."""
    available = sorted({m.id for m in await client.models()})
    known = [r for r in requests if r.model in available]
    unknown = [
        BadLine(r.line, r.custom_id, str(ModelNotFound(r.model, available)), ErrorCode.MODEL_NOT_FOUND)
        for r in requests
        if r.model not in available
    ]
    return known, unknown


async def _register(client: AsyncClient, batch_id: str, input_path: Path, lines: int) -> None:
    key = client.keys.batch(batch_id)
    async with client.connection.pipeline(transaction=False) as pipe:
        pipe.hsetnx(key, "started_at", str(time.time()))
        pipe.hset(key, mapping={"input": str(input_path.resolve()), "requests": lines})
        pipe.expire(key, BATCH_TTL_S)
        await pipe.execute()


async def batch_status(client: AsyncClient, batch_id: str) -> dict[str, Any]:
    """A batch's requests counted by job state, from Redis."""
    return await client._do(reads.batch_state(client.keys, batch_id))
