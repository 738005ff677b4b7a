"""The synchronous Python client: validate, enqueue on the model's queue, follow the stream."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, Literal, TypeVar, overload

import redis
from hostler.schemas import (
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_PREFIX,
    ChatMessage,
    CompletionResult,
    DoneEvent,
    ErrorEvent,
    Job,
    JobResult,
    Keys,
    LoadResult,
    ModelInfo,
    Priority,
    PullProgressEvent,
    PullResult,
    Status,
    TokenCountJob,
    TokenCountResult,
    UnloadJob,
    UnloadResult,
    WorkerReport,
)
from rq.queue import Queue

from . import _pull
from . import _reads as reads
from ._connection import PREFIX_ENV, connect
from ._errors import HostlerError, JobFailed, ModelNotFound, QueueFull, job_error
from ._events import PubSubPool, Subscription, Waiter, follow
from ._handle import JobHandle
from ._options import Options
from ._pieces import Stream, completion, stream_pieces
from ._progress import MapProgress
from ._requests import (
    ACCEPTED,
    EXISTS,
    Messages,
    backoff_pause,
    build,
    chat_job,
    check_in_flight,
    check_job_id,
    completion_job,
    enqueue_call,
    generation_job,
    load_request,
    new_job_id,
    prompt_or_messages,
    retry_after,
)
from ._rqstore import ENQUEUE_SCRIPT, make_queue

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 600.0
# Host reports change slowly; re-reading them for every job would double its round trips.
CATALOG_CACHE_S = 2.0


class Client:
    """Submits jobs to hostler workers through Redis.

    >>> client = Client("redis://127.0.0.1:6379/0")
    >>> client.complete("smollm2-135m", "Once upon a time", max_tokens=32).text
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        connection: redis.Redis | None = None,
    ) -> None:
        self.connection = connection if connection is not None else connect(url)
        self.keys = Keys(prefix or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX)
        self.timeout = timeout
        self._pubsubs = PubSubPool(self.connection)
        self._queues: dict[str, Queue] = {}
        self._catalog: dict[str, list[ModelInfo]] = {}
        self._catalog_at = 0.0
        self._lock = threading.Lock()
        self._enqueue_script = self.connection.register_script(ENQUEUE_SCRIPT)

    # -- generation ---------------------------------------------------------------

    def complete(
        self,
        model: str,
        prompt: str,
        *,
        timeout: float | None = None,
        priority: Priority = "interactive",
        start_within: float | str | None = None,
        job_timeout: float | str | None = None,
        retries: int = 0,
        **params: Any,
    ) -> CompletionResult:
        """Generate a completion and wait for it.

        priority: 'interactive' jobs are always taken before 'batch' ones. start_within: a
        job not started by then expires. job_timeout: longest generation time. retries: times
        the job is queued again if its worker dies while running it.
        """
        options = Options.of(priority, start_within, retries)
        job = completion_job(model, prompt, params, job_timeout=job_timeout)
        return completion(self._run(job, timeout, options))

    def stream(
        self,
        model: str,
        prompt: str,
        *,
        timeout: float | None = None,
        priority: Priority = "interactive",
        start_within: float | str | None = None,
        job_timeout: float | str | None = None,
        **params: Any,
    ) -> Iterator[str]:
        """Generate a completion and yield its text as it is made; see complete() for the options."""
        options = Options.of(priority, start_within, 0)
        job = completion_job(model, prompt, params, stream=True, job_timeout=job_timeout)
        return self._pieces(job, timeout, options)

    @overload
    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, str] | ChatMessage],
        *,
        stream: Literal[False] = False,
        timeout: float | None = None,
        priority: Priority = "interactive",
        start_within: float | str | None = None,
        job_timeout: float | str | None = None,
        **params: Any,
    ) -> CompletionResult: ...

    @overload
    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, str] | ChatMessage],
        *,
        stream: Literal[True],
        timeout: float | None = None,
        priority: Priority = "interactive",
        start_within: float | str | None = None,
        job_timeout: float | str | None = None,
        **params: Any,
    ) -> Iterator[str]: ...

    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, str] | ChatMessage],
        *,
        stream: bool = False,
        timeout: float | None = None,
        priority: Priority = "interactive",
        start_within: float | str | None = None,
        job_timeout: float | str | None = None,
        **params: Any,
    ) -> CompletionResult | Iterator[str]:
        """Chat through the model's own chat template; stream=True yields text pieces.

        The options are complete()'s.
        """
        options = Options.of(priority, start_within, 0)
        job = chat_job(model, messages, params, stream=stream, job_timeout=job_timeout)
        if stream:
            return self._pieces(job, timeout, options)
        return completion(self._run(job, timeout, options))

    def submit(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, str] | ChatMessage] | None = None,
        priority: Priority = "batch",
        start_within: float | str | None = None,
        job_timeout: float | str | None = None,
        retries: int = 0,
        stream: bool = False,
        job_id: str | None = None,
        **params: Any,
    ) -> JobHandle:
        """Enqueue a completion (prompt) or chat (messages) without waiting; returns its handle.

        Nobody waits on a submitted job, so it runs even if this process exits; it is a
        batch job unless priority says otherwise. stream=True publishes its pieces as they
        are made, for handle.stream(). job_id: pick the id yourself (a batch run derives
        them); if a job with that id exists already, nothing is enqueued and its handle is
        returned. Raises QueueFull when the queue is at its bound.
        """
        options = Options.of(priority, start_within, retries)
        job = generation_job(model, prompt, messages, params, stream=stream, job_timeout=job_timeout)
        job_id = new_job_id() if job_id is None else check_job_id(job_id)
        self._require_model(job.model)
        self._enqueue(job, job_id, options, waiting_ms=0)
        return JobHandle(self.connection, self.keys, job_id, job.model)

    def map(
        self,
        model: str,
        inputs: Iterable[str | Messages],
        *,
        max_in_flight: int = 16,
        priority: Priority = "batch",
        job_timeout: float | str | None = None,
        retries: int = 0,
        timeout: float | None = None,
        return_exceptions: bool = False,
        on_progress: Callable[[int, int | None], None] | None = None,
        progress: bool = False,
        **params: Any,
    ) -> Iterator[CompletionResult | JobFailed]:
        """Results of many prompts (strings) or message lists, in input order.

        Keeps up to max_in_flight jobs queued ahead of the one being waited on. A failed job
        raises JobFailed, or is yielded as one with return_exceptions=True. on_progress gets
        (finished, total or None) after each; progress=True draws a bar on stderr. Jobs still
        queued when the iterator is closed are canceled. timeout: longest wait for one result.
        """
        check_in_flight(max_in_flight)
        report = MapProgress(len(inputs) if isinstance(inputs, Sized) else None, on_progress, progress)
        items = iter(inputs)
        pending: deque[JobHandle] = deque()
        wait_s = self.timeout if timeout is None else timeout

        def submit(item: str | Messages) -> JobHandle:
            prompt, messages = prompt_or_messages(item)
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    return self.submit(
                        model,
                        prompt,
                        messages=messages,
                        priority=priority,
                        job_timeout=job_timeout,
                        retries=retries,
                        **params,
                    )
                except QueueFull as full:
                    time.sleep(backoff_pause(full, deadline))

        try:
            pending.extend(submit(item) for item in itertools.islice(items, max_in_flight))
            while pending:
                handle = pending.popleft()
                outcome: CompletionResult | JobFailed
                try:
                    outcome = completion(handle.result(timeout=wait_s))
                except JobFailed as exc:
                    if not return_exceptions:
                        raise
                    outcome = exc
                pending.extend(submit(item) for item in itertools.islice(items, max_in_flight - len(pending)))
                report.record(outcome.usage.completion_tokens if isinstance(outcome, CompletionResult) else None)
                yield outcome
        finally:
            report.close()
            for handle in pending:
                with contextlib.suppress(HostlerError, redis.RedisError):
                    handle.cancel()

    def job(self, job_id: str) -> JobHandle:
        """The handle of a job submitted earlier (by any client)."""
        origin = self._read(reads.job_origin(job_id))
        if origin is None:
            raise HostlerError(f"job {job_id} does not exist (it ended more than its TTL ago, or never was)")
        model = self.keys.model_of_queue(origin)
        if model is None:
            raise HostlerError(f"job {job_id} is not on a hostler queue (origin {origin!r})")
        return JobHandle(self.connection, self.keys, job_id, model)

    def count_tokens(self, model: str, text: str, *, timeout: float | None = None) -> int:
        """Tokens the model makes of text, exactly as complete() counts usage.prompt_tokens."""
        result = self._run(build(TokenCountJob, model=model, text=text), timeout, Options())
        assert isinstance(result, TokenCountResult)
        return result.count

    # -- model lifecycle ----------------------------------------------------------

    def load(
        self,
        model: str,
        *,
        replicas: int = 1,
        keep_alive: float | str = DEFAULT_KEEP_ALIVE_S,
        pinned: bool = False,
        timeout: float | None = None,
        **params: Any,
    ) -> LoadResult:
        """Load a model with params (n_ctx, n_batch, ...); later jobs use them until unload.

        replicas: workers to keep, each on its own host. keep_alive: idle time before it is
        unloaded (seconds or '5m', '1h'; -1 never). pinned: never evicted for another model.
        Raises NoCapacity when no host has the memory.
        """
        job, spec = load_request(model, replicas=replicas, keep_alive=keep_alive, pinned=pinned, params=params)
        self._require_model(model)
        # The spec first: the controller reads it when the load job makes it place the model.
        self.connection.set(self.keys.spec(model), spec.model_dump_json())
        result = self._run(job, timeout, Options())
        assert isinstance(result, LoadResult)
        return result

    def unload(self, model: str, *, timeout: float | None = None) -> UnloadResult:
        """Free the model's memory once the jobs queued before this have run."""
        result = self._run(build(UnloadJob, model=model), timeout, Options())
        assert isinstance(result, UnloadResult)
        return result

    def pull(
        self,
        repo: str,
        *,
        file: str | None = None,
        quant: str | None = None,
        revision: str = "main",
        model_id: str | None = None,
        host: str | None = None,
        progress: Callable[[PullProgressEvent], None] | None = None,
        timeout: float | None = None,
    ) -> PullResult:
        """Have a host download `repo` from the Hugging Face hub, as `hostler models pull` does.

        host: which live host pulls (needed when there are several). progress: called with
        each progress event (bytes done and total). timeout: longest wait in seconds (None: as
        long as the host keeps reporting). Returns once the host lists the model.
        """
        return _pull.pull(
            self.connection,
            self.keys,
            repo,
            file=file,
            quant=quant,
            revision=revision,
            model_id=model_id,
            host=host,
            progress=progress,
            timeout=timeout,
        )

    # -- inspection ---------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Every model on the disk of a live host: engine, size, memory estimate, loaded state,
        and the hosts with room for it now (as the controller counts free memory)."""
        listing, found = self._read(reads.models(self.keys))
        self._remember(found)
        return listing

    def status(self) -> Status:
        """Hosts (RAM, VRAM, what is placed and free), placements, workers and queue lengths."""
        return self._read(reads.status(self.keys))

    def queue_length(self, model: str) -> int:
        """Jobs waiting for the model, both priority classes together."""
        return self._read(reads.queue_length(self.keys, model))

    def close(self) -> None:
        self._pubsubs.close()
        self.connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------

    def _queue(self, model: str, priority: Priority) -> Queue:
        name = self.keys.queue_name(model, priority)
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = make_queue(self.connection, name)
        return queue

    def _read(self, reader: reads.Reads[T]) -> T:
        return reads.run_sync(self.connection, reader)

    def _remember(self, found: dict[str, list[ModelInfo]]) -> None:
        with self._lock:
            self._catalog, self._catalog_at = found, time.monotonic()

    def _require_model(self, model: str) -> None:
        with self._lock:
            fresh = time.monotonic() - self._catalog_at < CATALOG_CACHE_S
            known = model in self._catalog
        if fresh and known:
            return
        found = self._read(reads.catalog(self.keys))
        self._remember(found)
        if model not in found:
            raise ModelNotFound(model, sorted(found))

    def _worker_reports(self) -> list[WorkerReport]:
        return self._read(reads.worker_reports(self.keys))

    def _enqueue(self, job: Job, job_id: str, options: Options, *, waiting_ms: int) -> bool:
        """Writes the job and pushes it on its class's queue in one atomic step, or raises QueueFull.

        False when a job with this id exists already (nothing was written).
        """
        call = enqueue_call(
            self._queue(job.model, options.priority), self.keys, job, job_id, options, waiting_ms=waiting_ms
        )
        accepted, length, bound, alive = self._enqueue_script(keys=call.keys, args=call.args)
        if accepted == EXISTS:
            return False
        if accepted != ACCEPTED:
            reports = [r for r in self._worker_reports() if r.model == job.model]
            hint = retry_after(int(length), int(bound), [r.mean_job_s or 0.0 for r in reports], len(reports))
            raise QueueFull(job.model, int(bound), int(length), hint)
        if not alive:
            # No worker serves this model: ask the controller to place one.
            self.connection.rpush(self.keys.demand, job.model)
        return True

    def _start(self, job: Job, deadline: float, options: Options) -> tuple[str, Subscription, Waiter]:
        self._require_model(job.model)
        job_id = new_job_id()
        subscription = Subscription(self._pubsubs, self.keys.channel(job_id))
        try:
            self._enqueue(job, job_id, options, waiting_ms=Waiter.ttl_ms(deadline))
        except BaseException:
            subscription.close()
            raise
        return job_id, subscription, Waiter(self.connection, self.keys.waiting(job_id), deadline)

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _run(self, job: Job, timeout: float | None, options: Options) -> JobResult:
        deadline = self._deadline(timeout)
        job_id, subscription, waiter = self._start(job, deadline, options)
        ended = False
        try:
            for event in follow(self.connection, subscription, job_id, deadline, waiter):
                if isinstance(event, DoneEvent):
                    ended = True
                    return event.result
                if isinstance(event, ErrorEvent):
                    ended = True
                    raise job_error(job_id, event.code, event.message)
        finally:
            if not ended:
                # Gave up (timeout, interrupt): a job still queued is canceled now, not at expiry.
                # An ended job's key just lapses, which saves a round trip per job.
                waiter.release()
            subscription.close()
        raise HostlerError(f"job {job_id} ended without a result")  # pragma: no cover - follow always ends

    def _pieces(self, job: Job, timeout: float | None, options: Options) -> Iterator[str]:
        # Submitted eagerly, so that the job is queued even before the first next().
        deadline = self._deadline(timeout)
        job_id, subscription, waiter = self._start(job, deadline, options)
        return Stream(stream_pieces(self.connection, subscription, job_id, deadline, waiter), subscription, waiter)
