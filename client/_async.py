"""The asyncio client: ClientCore's calls and steps on redis.asyncio, for thousands of jobs.

Every job it follows shares one pub/sub connection (EventHub) and one renewal task for
the waiting keys (WaitingKeys), so thousands can be in flight without threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Literal, TypeVar, overload

from hostler.schemas import (
    CompletionResult,
    EmbeddingResult,
    JobResult,
    LoadResult,
    ModelInfo,
    PullProgressEvent,
    PullResult,
    Status,
    UnloadResult,
)

from . import _pull
from . import _reads as reads
from ._async_events import AsyncFollowed, EventHub, WaitingKeys
from ._async_handle import AsyncJobHandle, AsyncStream
from ._connection import connect, connect_async
from ._core import DEFAULT_TIMEOUT_S, Call, ClientCore, R
from ._errors import HostlerError, JobFailed
from ._follow import MAX_SILENCE_POLL_S, EventOrder
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
from ._pieces import completion
from ._requests import EmbedInputs, Messages, new_job_id
from ._steps import Steps, run_async

T = TypeVar("T")


class AsyncClient(ClientCore):
    """Submits jobs to hostler workers through Redis, from asyncio; Client's API, awaited.

    >>> async with AsyncClient("redis://127.0.0.1:6379/0") as client:
    ...     result = await client.complete("smollm2-135m", "Once upon a time", max_tokens=32)
    """

    def __init__(
        self, url: str | None = None, *, prefix: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.connection = connect_async(url)
        super().__init__(prefix=prefix, timeout=timeout, rq_connection=connect(url))
        self._events = EventHub(self.connection)
        self._waiting = WaitingKeys(self.connection)

    # -- generation ---------------------------------------------------------------

    async def complete(self, model: str, prompt: str, **kwargs: Unpack[CompleteKwargs]) -> CompletionResult:
        """Generate a completion and wait for it; see Client.complete()."""
        return await self._run(self._completion(model, prompt, kwargs, stream=False))

    async def stream(self, model: str, prompt: str, **kwargs: Unpack[StreamKwargs]) -> AsyncStream:
        """Enqueue a completion and return its text pieces as an async iterator.

        The job is queued when this returns, so QueueFull or ModelNotFound raise here,
        before the first piece; aclose() the stream to stop waiting.
        """
        return AsyncStream(await self._start(self._completion(model, prompt, kwargs, stream=True)))

    @overload
    async def chat(
        self, model: str, messages: Messages, *, stream: Literal[False] = False, **kwargs: Unpack[ChatKwargs]
    ) -> CompletionResult: ...

    @overload
    async def chat(
        self, model: str, messages: Messages, *, stream: Literal[True], **kwargs: Unpack[ChatKwargs]
    ) -> AsyncStream: ...

    async def chat(
        self, model: str, messages: Messages, *, stream: bool = False, **kwargs: Unpack[ChatKwargs]
    ) -> CompletionResult | AsyncStream:
        """Chat through the model's own chat template; stream=True returns an AsyncStream.

        tools= offers functions in OpenAI's shapes (tool_choice=, parallel_tool_calls= as OpenAI's):
        the calls the reply made are the result's tool_calls (finish_reason 'tool_calls'), its
        text what it said besides them; a stream yields only that text."""
        call = self._chat(model, messages, kwargs, stream=stream)
        return AsyncStream(await self._start(call)) if stream else await self._run(call)

    async def submit(self, model: str, prompt: str | None = None, **kwargs: Unpack[SubmitKwargs]) -> AsyncJobHandle:
        """Enqueue without waiting; see Client.submit()."""
        call, job_id = self._submission(model, prompt, kwargs)
        await self._do(self._submit(call, job_id))
        return AsyncJobHandle(self, job_id, call.job.model)

    async def map(
        self, model: str, inputs: Iterable[str | Messages], **kwargs: Unpack[MapKwargs]
    ) -> AsyncIterator[CompletionResult | JobFailed]:
        """Results of many prompts or message lists, in input order; see Client.map().

        max_in_flight is 64 unless given; every job in the window is followed at once.
        """
        window = InOrder(inputs, kwargs, max_in_flight=64, timeout=self.timeout)
        pending: deque[tuple[AsyncJobHandle, asyncio.Task[JobResult]]] = deque()

        async def fill() -> None:
            for prompt, messages in window.more(len(pending)):
                handle = await self.submit(model, prompt, messages=messages, **window.submit_kwargs)
                pending.append((handle, asyncio.create_task(handle.result(timeout=window.wait_s))))

        try:
            await fill()
            while pending:
                _, task = pending.popleft()
                outcome: CompletionResult | JobFailed
                try:
                    outcome = completion(await task)
                except JobFailed as exc:
                    outcome = window.failed(exc)
                await fill()
                yield window.record(outcome)
        finally:
            window.close()
            for handle, task in pending:
                task.cancel()
                with contextlib.suppress(HostlerError):
                    await handle.cancel()

    async def job(self, job_id: str) -> AsyncJobHandle:
        """The handle of a job submitted earlier (by any client)."""
        return AsyncJobHandle(self, job_id, await self._do(self._model_of(job_id)))

    async def count_tokens(self, model: str, text: str, *, timeout: float | None = None) -> int:
        """Tokens the model makes of text, exactly as complete() counts usage.prompt_tokens."""
        return (await self._run(self._counting(model, text, timeout))).count

    async def embed(
        self, model: str, texts: EmbedInputs, *, dimensions: int | None = None, **kwargs: Unpack[EmbedKwargs]
    ) -> EmbeddingResult:
        """Embed texts (or token-id lists): one unit-length vector per input; see Client.embed()."""
        return await self._run(self._embedding(model, texts, dimensions, kwargs))

    # -- model lifecycle ----------------------------------------------------------

    async def load(self, model: str, **kwargs: Unpack[LoadKwargs]) -> LoadResult:
        """Load a model with LoadParams; see Client.load()."""
        call, spec = self._loading(model, kwargs)
        await self._do(self._place(model, spec))
        return await self._run(call)

    async def unload(self, model: str, *, timeout: float | None = None) -> UnloadResult:
        """Free the model's memory once the jobs queued before this have run."""
        return await self._run(self._unloading(model, timeout))

    async def pull(self, repo: str, **kwargs: Unpack[PullKwargs]) -> PullResult:
        """Have a host download `repo` from the hub; see Client.pull().

        The pull is followed on a thread (pulls are rare and long) through the client's sync
        connection; progress is called on the event loop.
        """
        loop = asyncio.get_running_loop()
        progress = kwargs.get("progress")

        def on_loop(event: PullProgressEvent) -> None:
            if progress is not None:
                loop.call_soon_threadsafe(progress, event)

        kwargs["progress"] = on_loop
        return await asyncio.to_thread(_pull.pull, self._rq_connection, self.keys, repo, **kwargs)

    # -- inspection ---------------------------------------------------------------

    async def models(self) -> list[ModelInfo]:
        """Every model on the disk of a live host; see Client.models()."""
        return await self._do(self._models())

    async def status(self) -> Status:
        """Hosts, placements, workers and queue lengths; see Client.status()."""
        return await self._do(reads.status(self.keys))

    async def queue_length(self, model: str) -> int:
        """Jobs waiting for the model, both priority classes together."""
        return await self._do(reads.queue_length(self.keys, model))

    async def aclose(self) -> None:
        await self._waiting.close()
        await self._events.close()
        await self.connection.aclose()
        self._rq_connection.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- I/O ------------------------------------------------------------------------

    async def _do(self, steps: Steps[T]) -> T:
        return await run_async(self.connection, steps)

    async def _start(self, call: Call[R]) -> AsyncFollowed:
        """Enqueues a job this client waits on, subscribed to its channel first."""
        deadline = time.monotonic() + call.timeout_s
        await self._do(self._require_model(call.job.model))
        job_id = new_job_id()
        channel = self.keys.channel(job_id)
        queue = await self._events.subscribe(channel)
        try:
            await self._do(self._enqueue(call, job_id, watch_until=deadline))
        except BaseException:
            await self._events.unsubscribe(channel)
            raise
        waiting_key = self.keys.waiting(job_id)
        self._waiting.watch(waiting_key, deadline)
        order = EventOrder(job_id, deadline, max_poll_s=MAX_SILENCE_POLL_S)
        return AsyncFollowed(self.connection, self._events, channel, queue, order, (self._waiting, waiting_key))

    async def _run(self, call: Call[R]) -> R:
        async with contextlib.aclosing(await self._start(call)) as followed:
            return call.result(await followed.result())

    async def _follow(self, job_id: str, timeout: float) -> AsyncFollowed:
        """Follows a job submitted earlier; it may have ended already."""
        channel = self.keys.channel(job_id)
        queue = await self._events.subscribe(channel)
        order = EventOrder(job_id, time.monotonic() + timeout, max_poll_s=MAX_SILENCE_POLL_S, check_first=True)
        return AsyncFollowed(self.connection, self._events, channel, queue, order, None)
