"""Requests as jobs: validation and the enqueue call, shared by the sync and async clients.

Nothing here does I/O; the clients run what it builds on their own connections.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hostler.schemas import (
    MAX_REQUEST_BYTES,
    ChatJob,
    ChatMessage,
    CompletionJob,
    EmbeddingJob,
    Job,
    Keys,
    Lease,
    LoadJob,
    LoadParams,
    ModelSpec,
    NamedToolChoice,
    SamplingParams,
    describe_errors,
    embedding_inputs,
    parse_duration,
    rq_func_name,
)
from pydantic import ValidationError
from rq.job import Retry
from rq.queue import Queue

from ._errors import InvalidRequest, QueueFull
from ._grammar import GrammarError, check_structured, llama_available, schema_grammar
from ._options import Options, seconds
from ._rqstore import DEFAULT_MAX_QUEUE, FAILURE_TTL, QUEUED_TTL, RESULT_TTL, queue_keys

Messages = Sequence[Mapping[str, Any] | ChatMessage]
# A job id a caller picks (batch runs derive them) is used as a Redis key part: keep it plain.
MAX_JOB_ID_CHARS = 128


def new_job_id() -> str:
    return uuid.uuid4().hex


def check_job_id(job_id: str) -> str:
    if not job_id or len(job_id) > MAX_JOB_ID_CHARS or not all(c.isalnum() or c in "-_." for c in job_id):
        raise InvalidRequest(f"invalid job id {job_id!r}: use 1 to {MAX_JOB_ID_CHARS} letters, digits, '-', '_' or '.'")
    return job_id


def describe(error: ValidationError) -> str:
    return describe_errors(error, whole="request", unknown="parameter")


def validated(model_cls: type[SamplingParams] | type[LoadParams], params: Mapping[str, Any]) -> Any:
    try:
        return model_cls(**params)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)) from None


def build(job_cls: type[Job], **fields: Any) -> Job:
    try:
        built: Job = job_cls(**fields)
        return built
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)) from None


def completion_job(
    model: str, prompt: str, params: Mapping[str, Any], *, stream: bool = False, job_timeout: float | str | None
) -> Job:
    return _generation(CompletionJob, model, params, stream, job_timeout, prompt=prompt)


def chat_job(
    model: str,
    messages: Messages,
    params: Mapping[str, Any],
    *,
    stream: bool = False,
    job_timeout: float | str | None,
    tools: Mapping[str, Any] | None = None,
) -> Job:
    """tools: the ChatJob's tool fields (tools, tool_choice, parallel_tool_calls) that are set."""
    job = _generation(ChatJob, model, params, stream, job_timeout, messages=list(messages), **(tools or {}))
    _check_forced_tools(job)
    return job


def _check_forced_tools(job: Job) -> None:
    """The parameter schemas a forced call (tool_choice required or named) is sampled under, through
    llama.cpp's converter where this process has it; the worker checks again either way."""
    if not isinstance(job, ChatJob) or not job.tools or not llama_available():
        return
    choice = job.tool_choice
    for index, tool in enumerate(job.tools):
        named = isinstance(choice, NamedToolChoice) and choice.function.name == tool.function.name
        if (choice == "required" or named) and tool.function.parameters:
            try:
                schema_grammar(tool.function.parameters)
            except GrammarError as exc:
                where = f"tools.{index}.function.parameters (function {tool.function.name!r})"
                raise InvalidRequest(f"{where}: {exc}") from None


def _generation(
    job_cls: type[Job],
    model: str,
    params: Mapping[str, Any],
    stream: bool,
    job_timeout: float | str | None,
    **text: Any,
) -> Job:
    sampling = validated(SamplingParams, params)
    try:
        check_structured(sampling)
    except GrammarError as exc:
        raise InvalidRequest(str(exc)) from None
    return build(job_cls, model=model, **text, params=sampling, stream=stream, timeout_s=seconds(job_timeout))


def generation_job(
    model: str,
    prompt: str | None,
    messages: Messages | None,
    params: Mapping[str, Any],
    *,
    stream: bool,
    job_timeout: float | str | None,
    tools: Mapping[str, Any] | None = None,
) -> Job:
    """A completion (prompt) or a chat (messages, and its tools): exactly one of them."""
    if (prompt is None) == (messages is None):
        raise InvalidRequest("give a prompt or messages, not both or neither")
    if prompt is not None:
        if tools:
            raise InvalidRequest(f"{', '.join(tools)}: tools go with a chat (messages=), not with a prompt")
        return completion_job(model, prompt, params, stream=stream, job_timeout=job_timeout)
    return chat_job(model, messages or [], params, stream=stream, job_timeout=job_timeout, tools=tools)


# What embed() takes: one text, or several texts and token-id lists.
EmbedInputs = str | Sequence[str | Sequence[int]]


def embedding_job(model: str, texts: EmbedInputs, dimensions: int | None) -> Job:
    """The job of embed(); an empty list, an empty text or a wrong type is refused by index."""
    given: Any = texts
    if not isinstance(texts, str | list):
        given = list(texts) if isinstance(texts, Sequence) else texts
    if isinstance(given, list):
        given = [list(item) if isinstance(item, tuple) else item for item in given]
    try:
        inputs = embedding_inputs(given)
    except ValueError as exc:
        raise InvalidRequest(f"embed(): {exc}") from None
    return build(EmbeddingJob, model=model, inputs=inputs, dimensions=dimensions)


def load_request(
    model: str, *, replicas: int, keep_alive: float | str, pinned: bool, params: Mapping[str, Any]
) -> tuple[Job, ModelSpec]:
    load_params = validated(LoadParams, params)
    job = build(LoadJob, model=model, params=load_params)
    try:
        spec = ModelSpec(
            model=model,
            replicas=replicas,
            keep_alive_s=parse_duration(keep_alive),
            pinned=pinned,
            params=load_params,
        )
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)) from None
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    return job, spec


@dataclass(frozen=True)
class EnqueueCall:
    """The keys and arguments of one run of ENQUEUE_SCRIPT."""

    keys: list[str]
    args: list[Any]


# ENQUEUE_SCRIPT's first reply element.
REFUSED, ACCEPTED, EXISTS = 0, 1, 2


def enqueue_call(queue: Queue, keys: Keys, job: Job, job_id: str, options: Options, *, waiting_ms: int) -> EnqueueCall:
    """What writes a job as an rq record and pushes it on its class's queue, in one script run.

    `queue` only builds the record (rq's own format, JSON serializer); it does no I/O here.
    """
    if options.start_within_s is not None or waiting_ms:
        job = job.model_copy(update={"start_within_s": options.start_within_s, "watched": bool(waiting_ms)})
    kwargs = job.model_dump(mode="json")
    size = len(json.dumps(kwargs))
    if size > MAX_REQUEST_BYTES:
        raise InvalidRequest(f"request is {size} bytes; the limit is {MAX_REQUEST_BYTES} bytes")
    rq_job = queue.create_job(
        rq_func_name(job.kind),
        kwargs=kwargs,
        job_id=job_id,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        ttl=QUEUED_TTL,
        timeout=-1,
        description=f"{job.kind} on {job.model}",
        retry=Retry(max=options.retries) if options.retries else None,
    )
    queue._prepare_for_queue(rq_job)
    fields = [item for pair in rq_job.to_dict().items() for item in (pair[0], pair[1])]
    start_ms = int(options.start_within_s * 1000) if options.start_within_s is not None else 0
    lease = ""
    if waiting_ms or start_ms:
        lease = Lease(
            model=job.model, queue_key=queue.key, waiting=bool(waiting_ms), start_by=bool(start_ms)
        ).model_dump_json()
    return EnqueueCall(
        keys=[
            *queue_keys(keys, job.model),
            rq_job.key,
            queue.redis_queues_keys,
            queue.key,
            keys.bell(job.model),
            keys.alive(job.model),
            keys.leases,
            keys.waiting(job_id),
            keys.start_by(job_id),
            keys.max_queue,
        ],
        args=[job.model, DEFAULT_MAX_QUEUE, QUEUED_TTL, job_id, lease, waiting_ms, start_ms, *fields],
    )


def retry_after(length: int, bound: int, mean_job_times: Sequence[float], workers: int) -> float:
    """About how long a model's workers take to run the jobs over the bound, plus one."""
    times = [t for t in mean_job_times if t]
    if not times or not workers:
        return 1.0
    return max(1.0, (length - bound + 1) * (sum(times) / len(times)) / workers)


def prompt_or_messages(item: str | Messages) -> tuple[str | None, Messages | None]:
    """map() takes prompts and message lists alike: a string is a prompt."""
    if isinstance(item, str):
        return item, None
    return None, item


MAX_IN_FLIGHT = 100_000


def check_in_flight(max_in_flight: int) -> int:
    if not 1 <= max_in_flight <= MAX_IN_FLIGHT:
        raise InvalidRequest(f"invalid max_in_flight {max_in_flight}: use 1 to {MAX_IN_FLIGHT}")
    return max_in_flight


# The longest single wait out of a full queue: retry_after is only an estimate.
MAX_FULL_PAUSE_S = 5.0


def room_wait_s(wait_when_full: bool | float, limit: float) -> float:
    """Seconds to wait out a full queue: none for False, `limit` for True, else the number."""
    if wait_when_full is True:
        return limit
    if wait_when_full is False:
        return 0.0
    if not 0 <= wait_when_full < float("inf"):
        raise InvalidRequest(f"invalid wait_when_full {wait_when_full!r}: use True, False or a number of seconds")
    return float(wait_when_full)


def full_queue_pause(full: QueueFull, started: float, wait_s: float) -> float:
    """How long to wait before enqueueing again; past the wait, the QueueFull that ends it."""
    pause = min(full.retry_after, MAX_FULL_PAUSE_S)
    if wait_s <= 0:
        raise full
    if time.monotonic() + pause > started + wait_s:
        gave_up = QueueFull(full.model, full.bound, full.length, full.retry_after)
        gave_up.args = (f"{full}; gave up after waiting {time.monotonic() - started:.0f} s for room "
                        f"(wait_when_full allows {wait_s:g} s)",)  # fmt: skip
        raise gave_up from full
    return pause
