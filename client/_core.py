"""What Client and AsyncClient share: everything but the I/O.

ClientCore holds the settings (keys, timeout), the catalog cache and the rq queues that
build job records; it checks a method's arguments into a `Call` and writes every Redis
exchange once, as steps (see _steps): requiring a known model, the atomic enqueue with its
wait for room on a full queue, placing a load, finding a job. Client runs those steps on a
sync connection, AsyncClient on an asyncio one; following a job is _follow's EventOrder.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis
from hostler.schemas import (
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_PREFIX,
    PRIORITIES,
    CompletionResult,
    EmbeddingResult,
    ErrorCode,
    Job,
    JobResult,
    Keys,
    LoadResult,
    ModelInfo,
    ModelSpec,
    Priority,
    TokenCountJob,
    TokenCountResult,
    UnloadJob,
    UnloadResult,
)
from rq.queue import Queue

from . import _reads as reads
from ._connection import PREFIX_ENV, durability_of
from ._errors import HostlerError, InvalidRequest, ModelNotFound, NotReplicated, QueueFull
from ._follow import waiting_ttl_ms
from ._kwargs import (
    TOOL_OPTIONS,
    ChatOptions,
    CompleteOptions,
    EmbedKwargs,
    LoadOptions,
    StreamOptions,
    SubmitOptions,
    split,
)
from ._options import Options
from ._outcome import queue_key
from ._requests import (
    ACCEPTED,
    EXISTS,
    EmbedInputs,
    Messages,
    build,
    chat_job,
    check_job_id,
    completion_job,
    embedding_job,
    enqueue_call,
    full_queue_pause,
    generation_job,
    load_request,
    new_job_id,
    retry_after,
    room_wait_s,
)
from ._rqstore import ENQUEUE_SCRIPT, cancel_queued, make_queue
from ._steps import Pause, Replicated, ScriptRun, Steps

R = TypeVar("R", bound=JobResult)
C = TypeVar("C", bound="ClientCore")

DEFAULT_TIMEOUT_S = 600.0
# Host reports change slowly; re-reading them for every job would double its round trips.
CATALOG_CACHE_S = 2.0


@dataclass(frozen=True)
class Call(Generic[R]):
    """A checked request: the job, how it is queued, how long its caller waits, and the kind
    of result it ends with."""

    job: Job
    options: Options
    kind: type[R]
    # The longest wait for the result, and for room on a full queue (within it).
    timeout_s: float
    room_wait_s: float = 0.0

    def result(self, result: JobResult) -> R:
        if not isinstance(result, self.kind):
            raise HostlerError(f"expected a {self.kind.__name__}, got a {result.kind} result")
        return result


class ClientCore:
    """The shared core of Client and AsyncClient (httpx's BaseClient, for Redis)."""

    def __init__(self, *, prefix: str | None, timeout: float, rq_connection: redis.Redis) -> None:
        self.keys = Keys(prefix or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX)
        self.timeout = timeout
        # rq builds its job records on a sync connection; that one does no I/O but cancel().
        self._rq_connection = rq_connection
        # Replicas that must hold an enqueue before the caller hears it was accepted (the URL's).
        self._durability = durability_of(rq_connection)
        self._queues: dict[str, Queue] = {}
        self._catalog: dict[str, list[ModelInfo]] = {}
        self._catalog_at = 0.0
        self._lock = threading.Lock()

    # -- arguments into calls (nothing is written before they pass) ---------------------

    def _completion(
        self, model: str, prompt: str, kwargs: Mapping[str, Any], *, stream: bool
    ) -> Call[CompletionResult]:
        options, params = split(kwargs, StreamOptions if stream else CompleteOptions)
        queued = self._options(options, "interactive")
        job = completion_job(model, prompt, params, stream=stream, job_timeout=options.get("job_timeout"))
        return self._call(job, queued, options)

    def _chat(
        self, model: str, messages: Messages, kwargs: Mapping[str, Any], *, stream: bool
    ) -> Call[CompletionResult]:
        options, params = split(kwargs, ChatOptions)
        queued = self._options(options, "interactive")
        tools = {name: options[name] for name in TOOL_OPTIONS if name in options}
        job = chat_job(model, messages, params, stream=stream, job_timeout=options.get("job_timeout"), tools=tools)
        return self._call(job, queued, options)

    def _submission(
        self, model: str, prompt: str | None, kwargs: Mapping[str, Any]
    ) -> tuple[Call[CompletionResult], str]:
        """A submitted job's call and id. Nobody waits on its result, so wait_when_full=True
        waits for room as long as the client's timeout, and a number is not capped."""
        options, params = split(kwargs, SubmitOptions)
        queued = self._options(options, "batch")
        messages, stream = options.get("messages"), options.get("stream", False)
        tools = {name: options[name] for name in TOOL_OPTIONS if name in options}
        job = generation_job(
            model, prompt, messages, params, stream=stream, job_timeout=options.get("job_timeout"), tools=tools
        )
        job_id = options.get("job_id")
        job_id = new_job_id() if job_id is None else check_job_id(job_id)
        room_s = room_wait_s(options.get("wait_when_full", False), self.timeout)
        return Call(job, queued, CompletionResult, self.timeout, room_s), job_id

    def _counting(self, model: str, text: str, timeout: float | None) -> Call[TokenCountResult]:
        job = build(TokenCountJob, model=model, text=text)
        return Call(job, Options(), TokenCountResult, self._timeout(timeout))

    def _embedding(
        self, model: str, texts: EmbedInputs, dimensions: int | None, kwargs: Mapping[str, Any]
    ) -> Call[EmbeddingResult]:
        options, unknown = split(kwargs, EmbedKwargs)
        if unknown:
            raise InvalidRequest(f"embed(): unknown parameter(s) {', '.join(map(repr, sorted(unknown)))}")
        queued = self._options(options, "interactive")
        job = embedding_job(model, texts, dimensions)
        timeout = self._timeout(options.get("timeout"))
        room_s = min(room_wait_s(options.get("wait_when_full", False), timeout), timeout)
        return Call(job, queued, EmbeddingResult, timeout, room_s)

    def _embedding_submission(
        self, model: str, texts: EmbedInputs, dimensions: int | None, *, job_id: str, room_s: float
    ) -> Call[EmbeddingResult]:
        """A batch-priority embedding job nobody waits on (hostler batch); room_s: its wait for room."""
        check_job_id(job_id)
        job = embedding_job(model, texts, dimensions)
        return Call(job, Options.of("batch", None, 0), EmbeddingResult, self.timeout, room_s)

    def _unloading(self, model: str, timeout: float | None) -> Call[UnloadResult]:
        return Call(build(UnloadJob, model=model), Options(), UnloadResult, self._timeout(timeout))

    def _loading(self, model: str, kwargs: Mapping[str, Any]) -> tuple[Call[LoadResult], ModelSpec]:
        options, params = split(kwargs, LoadOptions)
        job, spec = load_request(
            model,
            replicas=options.get("replicas", 1),
            keep_alive=options.get("keep_alive", DEFAULT_KEEP_ALIVE_S),
            pinned=options.get("pinned", False),
            params=params,
        )
        return Call(job, Options(), LoadResult, self._timeout(options.get("timeout"))), spec

    def _options(self, options: Mapping[str, Any], priority: Priority) -> Options:
        return Options.of(options.get("priority", priority), options.get("start_within"), options.get("retries", 0))

    def _call(self, job: Job, queued: Options, options: Mapping[str, Any]) -> Call[CompletionResult]:
        timeout = self._timeout(options.get("timeout"))
        # A wait for room comes out of the call's own timeout: the job must still have time to run.
        room_s = min(room_wait_s(options.get("wait_when_full", False), timeout), timeout)
        return Call(job, queued, CompletionResult, timeout, room_s)

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    # -- the Redis exchanges, as steps ----------------------------------------------------

    def _require_model(self, model: str) -> Steps[None]:
        with self._lock:
            if time.monotonic() - self._catalog_at < CATALOG_CACHE_S and model in self._catalog:
                return
        found = yield from reads.catalog(self.keys)
        self._remember(found)
        if model not in found:
            raise ModelNotFound(model, sorted(found))

    def _remember(self, found: dict[str, list[ModelInfo]]) -> None:
        with self._lock:
            self._catalog, self._catalog_at = found, time.monotonic()

    def _enqueue(self, call: Call[Any], job_id: str, *, watch_until: float | None) -> Steps[bool]:
        """Writes the job and pushes it on its class's queue in one atomic step.

        A full queue raises QueueFull, or is waited out (following its retry_after hint) for
        as long as the call allows. watch_until: the deadline of a caller that waits on the
        job, whose waiting key it renews. False when a job with this id exists already
        (nothing was written).
        """
        started = time.monotonic()
        while True:
            try:
                return (yield from self._enqueue_once(call, job_id, watch_until))
            except QueueFull as full:
                yield Pause(full_queue_pause(full, started, call.room_wait_s))

    def _enqueue_once(self, call: Call[Any], job_id: str, watch_until: float | None) -> Steps[bool]:
        job, options = call.job, call.options
        waiting_ms = waiting_ttl_ms(watch_until) if watch_until is not None else 0
        queue = self._queue(job.model, options.priority)
        run = enqueue_call(queue, self.keys, job, job_id, options, waiting_ms=waiting_ms)
        script, durability = ScriptRun(ENQUEUE_SCRIPT, run.keys, run.args), self._durability
        if durability.waits:
            reply, confirmed = yield Replicated(script, durability.replicas, durability.timeout_ms)
        else:
            reply, confirmed = (yield script), 0
        accepted, length, bound, alive = reply
        if accepted == EXISTS:
            # Also the answer to an enqueue sent again after a failover: the promoted replica had it.
            return False
        if accepted != ACCEPTED:
            reports = [r for r in (yield from reads.worker_reports(self.keys)) if r.model == job.model]
            hint = retry_after(int(length), int(bound), [r.mean_job_s or 0.0 for r in reports], len(reports))
            raise QueueFull(job.model, int(bound), int(length), hint)
        if not alive:
            # No worker serves this model: ask the controller to place one.
            yield [("RPUSH", self.keys.demand, job.model)]
        if confirmed < durability.replicas:
            raise NotReplicated(job_id, confirmed, durability.replicas, durability.timeout_ms)
        return True

    def _submit(self, call: Call[Any], job_id: str) -> Steps[bool]:
        yield from self._require_model(call.job.model)
        return (yield from self._enqueue(call, job_id, watch_until=None))

    def _place(self, model: str, spec: ModelSpec) -> Steps[None]:
        yield from self._require_model(model)
        # The spec first: the controller reads it when the load job makes it place the model.
        yield [("SET", self.keys.spec(model), spec.model_dump_json())]

    def _model_of(self, job_id: str) -> Steps[str]:
        """The model of a job submitted earlier (by any client)."""
        origin = yield from reads.job_origin(job_id)
        if origin is None:
            raise HostlerError(f"job {job_id} does not exist (it ended more than its TTL ago, or never was)")
        model = self.keys.model_of_queue(origin)
        if model is None:
            raise HostlerError(f"job {job_id} is not on a hostler queue (origin {origin!r})")
        return model

    def _models(self) -> Steps[list[ModelInfo]]:
        listing, found = yield from reads.models(self.keys)
        self._remember(found)
        return listing

    def _queue(self, model: str, priority: Priority) -> Queue:
        name = self.keys.queue_name(model, priority)
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = make_queue(self._rq_connection, name)
        return queue

    def _cancel(self, job_id: str, model: str) -> bool:
        """Cancels a job still waiting; False if a worker has taken it. rq's registries write
        through the sync connection (the async client runs this on a thread)."""
        try:
            return any(
                cancel_queued(
                    self._rq_connection,
                    self.keys,
                    job_id,
                    queue_key(self.keys.queue_name(model, priority)),
                    ErrorCode.CANCELED,
                    "canceled by a client",
                )
                for priority in PRIORITIES
            )
        except redis.RedisError as exc:
            raise HostlerError(f"could not cancel job {job_id}: {exc}") from exc


class HandleBase(Generic[C]):
    """What both clients' job handles share: the client, the job's id and model."""

    def __init__(self, client: C, job_id: str, model: str) -> None:
        self.client = client
        self.id = job_id
        self.model = model

    @property
    def keys(self) -> Keys:
        return self.client.keys

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, model={self.model!r})"
