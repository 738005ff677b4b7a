"""The asyncio client: Client's surface on redis.asyncio, for thousands of jobs in one process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sized
from typing import Any, Literal, TypeVar, overload

import redis
import redis.asyncio
from hostler.schemas import (
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_PREFIX,
    PRIORITIES,
    CompletionResult,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    Job,
    JobResult,
    Keys,
    LoadResult,
    ModelInfo,
    Priority,
    Status,
    StreamEvent,
    TokenCountJob,
    TokenCountResult,
    TokenEvent,
    UnloadJob,
    UnloadResult,
)
from rq.queue import Queue

from . import _reads as reads
from ._async_events import EventHub, WaitingKeys, follow
from ._connection import PREFIX_ENV, connect, connect_async
from ._errors import HostlerError, JobFailed, ModelNotFound, QueueFull, Timeout, job_error
from ._options import Options
from ._outcome import queue_key
from ._pieces import completion
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
from ._rqstore import ENQUEUE_SCRIPT, cancel_queued, make_queue

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 600.0
CATALOG_CACHE_S = 2.0


class AsyncClient:
    """Submits jobs to hostler workers through Redis, from asyncio.

    >>> async with AsyncClient("redis://127.0.0.1:6379/0") as client:
    ...     result = await client.complete("smollm2-135m", "Once upon a time", max_tokens=32)

    Every job this client follows shares one pub/sub connection, so thousands can be in
    flight from one process without threads.
    """

    def __init__(
        self, url: str | None = None, *, prefix: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.connection = connect_async(url)
        # rq builds its job records on a sync connection object; that one never does I/O
        # except for cancel(), which rq's registries write through it.
        self._rq_connection = connect(url)
        self.keys = Keys(prefix or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX)
        self.timeout = timeout
        self._events = EventHub(self.connection)
        self._waiting = WaitingKeys(self.connection)
        self._queues: dict[str, Queue] = {}
        self._catalog: dict[str, list[ModelInfo]] = {}
        self._catalog_at = 0.0
        self._enqueue_script = self.connection.register_script(ENQUEUE_SCRIPT)

    # -- generation ---------------------------------------------------------------

    async def complete(
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
        """Generate a completion and wait for it; the options are Client.complete()'s."""
        options = Options.of(priority, start_within, retries)
        job = completion_job(model, prompt, params, job_timeout=job_timeout)
        return completion(await self._run(job, timeout, options))

    async def stream(
        self,
        model: str,
        prompt: str,
        *,
        timeout: float | None = None,
        priority: Priority = "interactive",
        start_within: float | str | None = None,
        job_timeout: float | str | None = None,
        **params: Any,
    ) -> AsyncStream:
        """Enqueue a completion and return its text pieces as an async iterator.

        The job is queued when this returns, so QueueFull or ModelNotFound raise here,
        before the first piece; aclose() the stream to stop waiting.
        """
        options = Options.of(priority, start_within, 0)
        job = completion_job(model, prompt, params, stream=True, job_timeout=job_timeout)
        return await self._stream(job, timeout, options)

    @overload
    async def chat(
        self,
        model: str,
        messages: Messages,
        *,
        stream: Literal[False] = False,
        timeout: float | None = None,
        priority: Priority = "interactive",
        start_within: float | str | None = None,
        job_timeout: float | str | None = None,
        **params: Any,
    ) -> CompletionResult: ...

    @overload
    async def chat(
        self,
        model: str,
        messages: Messages,
        *,
        stream: Literal[True],
        timeout: float | None = None,
        priority: Priority = "interactive",
        start_within: float | str | None = None,
        job_timeout: float | str | None = None,
        **params: Any,
    ) -> AsyncStream: ...

    async def chat(
        self,
        model: str,
        messages: Messages,
        *,
        stream: bool = False,
        timeout: float | None = None,
        priority: Priority = "interactive",
        start_within: float | str | None = None,
        job_timeout: float | str | None = None,
        **params: Any,
    ) -> CompletionResult | AsyncStream:
        """Chat through the model's own chat template; stream=True returns an AsyncStream."""
        options = Options.of(priority, start_within, 0)
        job = chat_job(model, messages, params, stream=stream, job_timeout=job_timeout)
        if stream:
            return await self._stream(job, timeout, options)
        return completion(await self._run(job, timeout, options))

    async def submit(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        priority: Priority = "batch",
        start_within: float | str | None = None,
        job_timeout: float | str | None = None,
        retries: int = 0,
        stream: bool = False,
        job_id: str | None = None,
        **params: Any,
    ) -> AsyncJobHandle:
        """Enqueue without waiting; see Client.submit()."""
        options = Options.of(priority, start_within, retries)
        job = generation_job(model, prompt, messages, params, stream=stream, job_timeout=job_timeout)
        job_id = new_job_id() if job_id is None else check_job_id(job_id)
        await self._require_model(job.model)
        await self._enqueue(job, job_id, options, waiting_ms=0)
        return AsyncJobHandle(self, job_id, job.model)

    async def map(
        self,
        model: str,
        inputs: Iterable[str | Messages],
        *,
        max_in_flight: int = 64,
        priority: Priority = "batch",
        job_timeout: float | str | None = None,
        retries: int = 0,
        timeout: float | None = None,
        return_exceptions: bool = False,
        on_progress: Callable[[int, int | None], None] | None = None,
        progress: bool = False,
        **params: Any,
    ) -> AsyncIterator[CompletionResult | JobFailed]:
        """Results of many prompts or message lists, in input order; see Client.map()."""
        check_in_flight(max_in_flight)
        report = MapProgress(len(inputs) if isinstance(inputs, Sized) else None, on_progress, progress)
        items = iter(inputs)
        pending: deque[tuple[AsyncJobHandle, asyncio.Task[JobResult]]] = deque()
        wait_s = self.timeout if timeout is None else timeout

        async def fill() -> None:
            for item in itertools.islice(items, max_in_flight - len(pending)):
                prompt, messages = prompt_or_messages(item)
                deadline = time.monotonic() + wait_s
                while True:
                    try:
                        handle = await self.submit(
                            model,
                            prompt,
                            messages=messages,
                            priority=priority,
                            job_timeout=job_timeout,
                            retries=retries,
                            **params,
                        )
                        break
                    except QueueFull as full:
                        await asyncio.sleep(backoff_pause(full, deadline))
                pending.append((handle, asyncio.create_task(handle.result(timeout=wait_s))))

        try:
            await fill()
            while pending:
                _, task = pending.popleft()
                outcome: CompletionResult | JobFailed
                try:
                    outcome = completion(await task)
                except JobFailed as exc:
                    if not return_exceptions:
                        raise
                    outcome = exc
                await fill()
                report.record(outcome.usage.completion_tokens if isinstance(outcome, CompletionResult) else None)
                yield outcome
        finally:
            report.close()
            for handle, task in pending:
                task.cancel()
                with contextlib.suppress(HostlerError):
                    await handle.cancel()

    async def job(self, job_id: str) -> AsyncJobHandle:
        """The handle of a job submitted earlier (by any client)."""
        origin = await self._read(reads.job_origin(job_id))
        if origin is None:
            raise HostlerError(f"job {job_id} does not exist (it ended more than its TTL ago, or never was)")
        model = self.keys.model_of_queue(origin)
        if model is None:
            raise HostlerError(f"job {job_id} is not on a hostler queue (origin {origin!r})")
        return AsyncJobHandle(self, job_id, model)

    async def count_tokens(self, model: str, text: str, *, timeout: float | None = None) -> int:
        """Tokens the model makes of text, exactly as complete() counts usage.prompt_tokens."""
        result = await self._run(build(TokenCountJob, model=model, text=text), timeout, Options())
        assert isinstance(result, TokenCountResult)
        return result.count

    # -- model lifecycle ----------------------------------------------------------

    async def load(
        self,
        model: str,
        *,
        replicas: int = 1,
        keep_alive: float | str = DEFAULT_KEEP_ALIVE_S,
        pinned: bool = False,
        timeout: float | None = None,
        **params: Any,
    ) -> LoadResult:
        """Load a model with params; see Client.load()."""
        job, spec = load_request(model, replicas=replicas, keep_alive=keep_alive, pinned=pinned, params=params)
        await self._require_model(model)
        # The spec first: the controller reads it when the load job makes it place the model.
        await self.connection.set(self.keys.spec(model), spec.model_dump_json())
        result = await self._run(job, timeout, Options())
        assert isinstance(result, LoadResult)
        return result

    async def unload(self, model: str, *, timeout: float | None = None) -> UnloadResult:
        """Free the model's memory once the jobs queued before this have run."""
        result = await self._run(build(UnloadJob, model=model), timeout, Options())
        assert isinstance(result, UnloadResult)
        return result

    # -- inspection ---------------------------------------------------------------

    async def models(self) -> list[ModelInfo]:
        """Every model on the disk of a live host; see Client.models()."""
        listing, found = await self._read(reads.models(self.keys))
        self._catalog, self._catalog_at = found, time.monotonic()
        return listing

    async def status(self) -> Status:
        """Hosts, placements, workers and queue lengths; see Client.status()."""
        return await self._read(reads.status(self.keys))

    async def queue_length(self, model: str) -> int:
        """Jobs waiting for the model, both priority classes together."""
        return await self._read(reads.queue_length(self.keys, model))

    async def aclose(self) -> None:
        await self._waiting.close()
        await self._events.close()
        await self.connection.aclose()
        self._rq_connection.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- internals ----------------------------------------------------------------

    async def _read(self, reader: reads.Reads[T]) -> T:
        return await reads.run_async(self.connection, reader)

    async def _require_model(self, model: str) -> None:
        if time.monotonic() - self._catalog_at < CATALOG_CACHE_S and model in self._catalog:
            return
        found = await self._read(reads.catalog(self.keys))
        self._catalog, self._catalog_at = found, time.monotonic()
        if model not in found:
            raise ModelNotFound(model, sorted(found))

    def _queue(self, model: str, priority: Priority) -> Queue:
        name = self.keys.queue_name(model, priority)
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = make_queue(self._rq_connection, name)
        return queue

    async def _enqueue(self, job: Job, job_id: str, options: Options, *, waiting_ms: int) -> bool:
        """As Client._enqueue: one script run, QueueFull past the bound, False if the id exists."""
        queue = self._queue(job.model, options.priority)
        call = enqueue_call(queue, self.keys, job, job_id, options, waiting_ms=waiting_ms)
        accepted, length, bound, alive = await self._enqueue_script(keys=call.keys, args=call.args)
        if accepted == EXISTS:
            return False
        if accepted != ACCEPTED:
            reports = [r for r in await self._read(reads.worker_reports(self.keys)) if r.model == job.model]
            hint = retry_after(int(length), int(bound), [r.mean_job_s or 0.0 for r in reports], len(reports))
            raise QueueFull(job.model, int(bound), int(length), hint)
        if not alive:
            await self.connection.rpush(self.keys.demand, job.model)
        return True

    async def _start(self, job: Job, timeout: float | None, options: Options) -> _Followed:
        await self._require_model(job.model)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        job_id = new_job_id()
        channel = self.keys.channel(job_id)
        queue = await self._events.subscribe(channel)
        waiting_key = self.keys.waiting(job_id)
        try:
            await self._enqueue(job, job_id, options, waiting_ms=WaitingKeys.ttl_ms(deadline))
        except BaseException:
            await self._events.unsubscribe(channel)
            raise
        self._waiting.watch(waiting_key, deadline)
        return _Followed(self, job_id, queue, deadline)

    async def _run(self, job: Job, timeout: float | None, options: Options) -> JobResult:
        followed = await self._start(job, timeout, options)
        try:
            async for event in followed.events():
                if isinstance(event, DoneEvent):
                    return event.result
                if isinstance(event, ErrorEvent):
                    raise job_error(followed.job_id, event.code, event.message)
        finally:
            await followed.close()
        raise HostlerError(f"job {followed.job_id} ended without a result")  # pragma: no cover

    async def _stream(self, job: Job, timeout: float | None, options: Options) -> AsyncStream:
        return AsyncStream(await self._start(job, timeout, options))


class _Followed:
    """One job this client follows: its channel queue, its waiting key, whether it ended."""

    def __init__(self, client: AsyncClient, job_id: str, queue: asyncio.Queue[bytes], deadline: float) -> None:
        self.client = client
        self.job_id = job_id
        self.queue = queue
        self.deadline = deadline
        self.ended = False
        self._closed = False

    async def events(self) -> AsyncIterator[StreamEvent]:
        async for event in follow(self.client.connection, self.queue, self.job_id, self.deadline):
            if not isinstance(event, TokenEvent):
                self.ended = True
            yield event

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        waiting_key = self.client.keys.waiting(self.job_id)
        if self.ended:
            self.client._waiting.forget(waiting_key)
        else:
            # Gave up (timeout, cancellation, aclose): a job still queued is canceled now.
            await self.client._waiting.release(waiting_key)
        await self.client._events.unsubscribe(self.client.keys.channel(self.job_id))


class AsyncStream:
    """A streamed job's text pieces: `async for piece in stream`; aclose() stops waiting."""

    def __init__(self, followed: _Followed) -> None:
        self._followed = followed
        self._pieces = self._generate()
        self.job_id = followed.job_id
        # The whole result (finish reason, usage) once the last piece has been read.
        self.result: CompletionResult | None = None

    def _done(self, result: CompletionResult) -> None:
        self.result = result

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> str:
        return await self._pieces.__anext__()

    async def _generate(self) -> AsyncIterator[str]:
        try:
            async for piece in pieces(self._followed.events(), self._followed.job_id, self._done):
                yield piece
        finally:
            await self._followed.close()

    async def aclose(self) -> None:
        await self._pieces.aclose()  # type: ignore[attr-defined]
        await self._followed.close()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def pieces(
    events: AsyncIterator[StreamEvent], job_id: str, on_done: Callable[[CompletionResult], None] | None = None
) -> AsyncIterator[str]:
    """Text pieces of a job's events; raises the job's error if it fails. on_done gets the result."""
    emitted: list[str] = []
    async for event in events:
        if isinstance(event, TokenEvent):
            emitted.append(event.text)
            yield event.text
        elif isinstance(event, ErrorEvent):
            raise job_error(job_id, event.code, event.message)
        elif isinstance(event, DoneEvent):
            # After a gap the done event comes from the stored result: send what was missed.
            result = completion(event.result)
            if on_done is not None:
                on_done(result)
            text = result.text
            sent = "".join(emitted)
            if len(text) > len(sent):
                yield text[len(sent) :]


class AsyncJobHandle:
    """A submitted job, from asyncio: status, result, stream, cancel."""

    def __init__(self, client: AsyncClient, job_id: str, model: str) -> None:
        self.client = client
        self.id = job_id
        self.model = model

    def __repr__(self) -> str:
        return f"AsyncJobHandle({self.id!r}, model={self.model!r})"

    async def status(self) -> str:
        """queued, started, finished, failed or canceled ('missing' once its record expired)."""
        return await self.client._read(reads.job_status(self.id))

    async def result(self, timeout: float = 600.0) -> JobResult:
        """Waits for the job's end; returns its result or raises JobFailed (or Timeout)."""
        channel = self.client.keys.channel(self.id)
        queue = await self.client._events.subscribe(channel)
        deadline = time.monotonic() + timeout
        try:
            async for event in follow(self.client.connection, queue, self.id, deadline):
                if isinstance(event, DoneEvent):
                    return event.result
                if isinstance(event, ErrorEvent):
                    raise job_error(self.id, event.code, event.message)
        except Timeout:
            raise Timeout(f"job {self.id} did not finish within {timeout:.0f} s; it is {await self.status()}") from None
        finally:
            await self.client._events.unsubscribe(channel)
        raise HostlerError(f"job {self.id} ended without a result")  # pragma: no cover - follow always ends

    async def stream(self, timeout: float = 600.0) -> AsyncIterator[str]:
        """The job's text as it is made (for a job submitted with stream=True; otherwise the
        whole text once it ends). Pieces published before this call come as one piece."""
        channel = self.client.keys.channel(self.id)
        queue = await self.client._events.subscribe(channel)
        try:
            events = follow(self.client.connection, queue, self.id, time.monotonic() + timeout)
            async for piece in pieces(events, self.id):
                yield piece
        finally:
            await self.client._events.unsubscribe(channel)

    async def cancel(self) -> bool:
        """Cancels the job if it is still waiting; False if a worker has already taken it."""
        # rq's registries write through a sync connection; a cancel is rare, so a thread is fine.
        return await asyncio.to_thread(self._cancel)

    def _cancel(self) -> bool:
        keys = self.client.keys
        try:
            return any(
                cancel_queued(
                    self.client._rq_connection,
                    keys,
                    self.id,
                    queue_key(keys.queue_name(self.model, priority)),
                    ErrorCode.CANCELED,
                    "canceled by a client",
                )
                for priority in PRIORITIES
            )
        except redis.RedisError as exc:
            raise HostlerError(f"could not cancel job {self.id}: {exc}") from exc
