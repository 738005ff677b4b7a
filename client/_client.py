"""The synchronous Python client: ClientCore's calls and steps, run on a sync Redis connection."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Literal, TypeVar, overload

import redis
from hostler.schemas import (
    CompletionResult,
    EmbeddingResult,
    LoadResult,
    ModelInfo,
    PullResult,
    Status,
    UnloadResult,
    WorkerReport,
)

from . import _pull
from . import _reads as reads
from ._connection import connect
from ._core import DEFAULT_TIMEOUT_S, Call, ClientCore, R
from ._errors import HostlerError, JobFailed
from ._events import Followed, PubSubPool, Subscription, Waiter
from ._follow import SILENCE_POLL_S, EventOrder
from ._handle import JobHandle
from ._kwargs import (
    ChatKwargs,
    CompleteKwargs,
    EmbedKwargs,
    LoadKwargs,
    MapKwargs,
    PullKwargs,
    StreamKwargs,
    SubmitKwargs,
    Unpack,
)
from ._map import InOrder
from ._pieces import Stream, completion
from ._requests import EmbedInputs, Messages, new_job_id
from ._steps import Steps, run_sync

T = TypeVar("T")


class Client(ClientCore):
    """Submits jobs to hostler workers through Redis.

    >>> client = Client("redis://127.0.0.1:6379/0")
    >>> client.complete("smollm2-135m", "Once upon a time", max_tokens=32).text

    Every generation method takes SamplingParams' fields as keywords (max_tokens,
    temperature, top_p, top_k, min_p, stop, seed, repeat_penalty, presence_penalty,
    frequency_penalty), and how the job is queued: priority ('interactive' jobs are always
    taken before 'batch' ones), start_within (a job not started by then expires), job_timeout
    (longest generation time) and wait_when_full (wait out a full queue instead of raising
    QueueFull: True for as long as the call may wait, or at most that many seconds).
    timeout is the longest wait for the result (the client's timeout by default).
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
        super().__init__(prefix=prefix, timeout=timeout, rq_connection=self.connection)
        self._pubsubs = PubSubPool(self.connection)

    # -- generation ---------------------------------------------------------------

    def complete(self, model: str, prompt: str, **kwargs: Unpack[CompleteKwargs]) -> CompletionResult:
        """Generate a completion and wait for it. retries: times the job is queued again if
        its worker dies while running it."""
        return self._run(self._completion(model, prompt, kwargs, stream=False))

    def stream(self, model: str, prompt: str, **kwargs: Unpack[StreamKwargs]) -> Stream:
        """Generate a completion and yield its text as it is made; the job is queued when this
        returns. The stream's job_id names the job, its result is the whole result at the end."""
        return Stream(self._start(self._completion(model, prompt, kwargs, stream=True)))

    @overload
    def chat(
        self, model: str, messages: Messages, *, stream: Literal[False] = False, **kwargs: Unpack[ChatKwargs]
    ) -> CompletionResult: ...

    @overload
    def chat(
        self, model: str, messages: Messages, *, stream: Literal[True], **kwargs: Unpack[ChatKwargs]
    ) -> Stream: ...

    def chat(
        self, model: str, messages: Messages, *, stream: bool = False, **kwargs: Unpack[ChatKwargs]
    ) -> CompletionResult | Stream:
        """Chat through the model's own chat template; stream=True returns a Stream of pieces.

        tools= offers functions in OpenAI's shapes (tool_choice=, parallel_tool_calls= as OpenAI's):
        the calls the reply made are the result's tool_calls (finish_reason 'tool_calls'), its
        text what it said besides them; a stream yields only that text."""
        call = self._chat(model, messages, kwargs, stream=stream)
        return Stream(self._start(call)) if stream else self._run(call)

    def submit(self, model: str, prompt: str | None = None, **kwargs: Unpack[SubmitKwargs]) -> JobHandle:
        """Enqueue a completion (prompt) or chat (messages=) without waiting; returns its handle.

        Nobody waits on a submitted job, so it runs even if this process exits; it is a
        batch job unless priority says otherwise. stream=True publishes its pieces as they
        are made, for handle.stream(). job_id: pick the id yourself (a batch run derives
        them); if a job with that id exists already, nothing is enqueued and its handle is
        returned. Raises QueueFull when the queue is at its bound, unless wait_when_full
        (True: up to the client's timeout) waits for room.
        """
        call, job_id = self._submission(model, prompt, kwargs)
        self._do(self._submit(call, job_id))
        return JobHandle(self, job_id, call.job.model)

    def map(
        self, model: str, inputs: Iterable[str | Messages], **kwargs: Unpack[MapKwargs]
    ) -> Iterator[CompletionResult | JobFailed]:
        """Results of many prompts (strings) or message lists, in input order.

        Keeps up to max_in_flight (16) jobs queued ahead of the one being waited on, waiting
        out a full queue. A failed job raises JobFailed, or is yielded as one with
        return_exceptions=True. on_progress gets (finished, total or None) after each;
        progress=True draws a bar on stderr. Jobs still queued when the iterator is closed are
        canceled. timeout: longest wait for one result. priority is 'batch' unless given.
        """
        window = InOrder(inputs, kwargs, max_in_flight=16, timeout=self.timeout)
        pending: deque[JobHandle] = deque()

        def fill() -> None:
            for prompt, messages in window.more(len(pending)):
                pending.append(self.submit(model, prompt, messages=messages, **window.submit_kwargs))

        try:
            fill()
            while pending:
                handle = pending.popleft()
                outcome: CompletionResult | JobFailed
                try:
                    outcome = completion(handle.result(timeout=window.wait_s))
                except JobFailed as exc:
                    outcome = window.failed(exc)
                fill()
                yield window.record(outcome)
        finally:
            window.close()
            for handle in pending:
                with contextlib.suppress(HostlerError):
                    handle.cancel()

    def job(self, job_id: str) -> JobHandle:
        """The handle of a job submitted earlier (by any client)."""
        return JobHandle(self, job_id, self._do(self._model_of(job_id)))

    def count_tokens(self, model: str, text: str, *, timeout: float | None = None) -> int:
        """Tokens the model makes of text, exactly as complete() counts usage.prompt_tokens."""
        return self._run(self._counting(model, text, timeout)).count

    def embed(
        self, model: str, texts: EmbedInputs, *, dimensions: int | None = None, **kwargs: Unpack[EmbedKwargs]
    ) -> EmbeddingResult:
        """Embed texts (or token-id lists) with the model: one unit-length vector per input.

        Returns an EmbeddingResult: `.vectors` in input order, `.usage.prompt_tokens` the tokens
        of all inputs, `.pooling` how token states became a vector (the model's own pooling,
        mean for models that declare none). dimensions: keep the first N dimensions, normalised
        again. An input longer than the model's context fails with ContextExceeded naming its
        index; an empty list or text raises InvalidRequest before anything is queued. Many
        inputs go in one job, embedded in packed batches between the generations in flight.
        """
        return self._run(self._embedding(model, texts, dimensions, kwargs))

    # -- model lifecycle ----------------------------------------------------------

    def load(self, model: str, **kwargs: Unpack[LoadKwargs]) -> LoadResult:
        """Load a model with LoadParams (n_ctx, n_batch, ...); later jobs use them until unload.

        replicas: workers to keep, each on its own host. keep_alive: idle time before it is
        unloaded (seconds or '5m', '1h'; -1 never). pinned: never evicted for another model.
        Raises NoCapacity when no host has the memory.
        """
        call, spec = self._loading(model, kwargs)
        self._do(self._place(model, spec))
        return self._run(call)

    def unload(self, model: str, *, timeout: float | None = None) -> UnloadResult:
        """Free the model's memory once the jobs queued before this have run."""
        return self._run(self._unloading(model, timeout))

    def pull(self, repo: str, **kwargs: Unpack[PullKwargs]) -> PullResult:
        """Have a host download `repo` from the Hugging Face hub, as `hostler models pull` does.

        file or quant pick the file; revision (main), model_id. host: which live host pulls
        (needed when there are several). progress: called with each progress event (bytes
        done and total). timeout: longest wait in seconds (None: as long as the host keeps
        reporting). Returns once the host lists the model.
        """
        return _pull.pull(self.connection, self.keys, repo, **kwargs)

    # -- inspection ---------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Every model on the disk of a live host: engine, size, memory estimate, loaded state,
        and the hosts with room for it now (as the controller counts free memory)."""
        return self._do(self._models())

    def status(self) -> Status:
        """Hosts (RAM, VRAM, what is placed and free), placements, workers and queue lengths."""
        return self._do(reads.status(self.keys))

    def queue_length(self, model: str) -> int:
        """Jobs waiting for the model, both priority classes together."""
        return self._do(reads.queue_length(self.keys, model))

    def close(self) -> None:
        self._pubsubs.close()
        self.connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- I/O ------------------------------------------------------------------------

    def _do(self, steps: Steps[T]) -> T:
        return run_sync(self.connection, steps)

    def _worker_reports(self) -> list[WorkerReport]:
        return self._do(reads.worker_reports(self.keys))

    def _start(self, call: Call[R]) -> Followed:
        """Enqueues a job this client waits on, subscribed to its channel first."""
        deadline = time.monotonic() + call.timeout_s
        self._do(self._require_model(call.job.model))
        job_id = new_job_id()
        subscription = Subscription(self._pubsubs, self.keys.channel(job_id))
        try:
            self._do(self._enqueue(call, job_id, watch_until=deadline))
        except BaseException:
            subscription.close()
            raise
        waiter = Waiter(self.connection, self.keys.waiting(job_id), deadline)
        return Followed(self.connection, subscription, EventOrder(job_id, deadline, max_poll_s=SILENCE_POLL_S), waiter)

    def _run(self, call: Call[R]) -> R:
        with contextlib.closing(self._start(call)) as followed:
            return call.result(followed.result())

    def _follow(self, job_id: str, timeout: float) -> Followed:
        """Follows a job submitted earlier; it may have ended already."""
        order = EventOrder(job_id, time.monotonic() + timeout, max_poll_s=SILENCE_POLL_S, check_first=True)
        return Followed(self.connection, Subscription(self._pubsubs, self.keys.channel(job_id)), order, None)
