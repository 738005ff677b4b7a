"""The synchronous Python client: validate, enqueue on the model's queue, follow the stream."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, overload

import redis
from hostler.schemas import (
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_PREFIX,
    Assignment,
    ChatJob,
    ChatMessage,
    ClusterView,
    CompletionJob,
    CompletionResult,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    HostReport,
    HostStatus,
    Job,
    JobResult,
    Keys,
    LoadJob,
    LoadParams,
    LoadResult,
    ModelInfo,
    ModelSpec,
    SamplingParams,
    Status,
    TokenCountJob,
    TokenCountResult,
    TokenEvent,
    UnloadJob,
    UnloadResult,
    WorkerReport,
    WorkerStatus,
    parse_duration,
    rq_func_name,
)
from pydantic import ValidationError
from rq.queue import Queue

from ._connection import PREFIX_ENV, connect
from ._errors import ContextExceeded, HostlerError, InvalidRequest, JobFailed, ModelNotFound, NoCapacity
from ._events import PubSubPool, Subscription, follow
from ._rqstore import FAILURE_TTL, QUEUED_TTL, RESULT_TTL, make_queue

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

    # -- generation ---------------------------------------------------------------

    def complete(self, model: str, prompt: str, *, timeout: float | None = None, **params: Any) -> CompletionResult:
        job = _build(CompletionJob, model=model, prompt=prompt, params=_sampling(params))
        return _completion(self._run(job, timeout))

    def stream(self, model: str, prompt: str, *, timeout: float | None = None, **params: Any) -> Iterator[str]:
        job = _build(CompletionJob, model=model, prompt=prompt, params=_sampling(params), stream=True)
        return self._pieces(job, timeout)

    @overload
    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, str] | ChatMessage],
        *,
        stream: Literal[False] = False,
        timeout: float | None = None,
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
        **params: Any,
    ) -> Iterator[str]: ...

    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, str] | ChatMessage],
        *,
        stream: bool = False,
        timeout: float | None = None,
        **params: Any,
    ) -> CompletionResult | Iterator[str]:
        """Chat through the model's own chat template; stream=True yields text pieces."""
        job = _build(ChatJob, model=model, messages=list(messages), params=_sampling(params), stream=stream)
        if stream:
            return self._pieces(job, timeout)
        return _completion(self._run(job, timeout))

    def count_tokens(self, model: str, text: str, *, timeout: float | None = None) -> int:
        """Tokens the model makes of text, exactly as complete() counts usage.prompt_tokens."""
        result = self._run(_build(TokenCountJob, model=model, text=text), timeout)
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
        load_params = _validated(LoadParams, params)
        job = _build(LoadJob, model=model, params=load_params)
        try:
            spec = ModelSpec(
                model=model,
                replicas=replicas,
                keep_alive_s=parse_duration(keep_alive),
                pinned=pinned,
                params=load_params,
            )
        except (ValidationError, ValueError) as exc:
            raise InvalidRequest(_describe(exc) if isinstance(exc, ValidationError) else str(exc)) from None
        self._require_model(model)
        # The spec first: the controller reads it when the load job makes it place the model.
        self.connection.set(self.keys.spec(model), spec.model_dump_json())
        result = self._run(job, timeout)
        assert isinstance(result, LoadResult)
        return result

    def unload(self, model: str, *, timeout: float | None = None) -> UnloadResult:
        """Free the model's memory once the jobs queued before this have run."""
        result = self._run(_build(UnloadJob, model=model), timeout)
        assert isinstance(result, UnloadResult)
        return result

    # -- inspection ---------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Every model on the disk of a live host: engine, size, memory estimate, loaded state,
        and the hosts with room for it now (as the controller counts free memory)."""
        loaded = {(report.host, report.model) for report in self._worker_reports() if report.loaded}
        catalog = self._read_catalog()
        hosts = self._host_statuses(self._view())
        return [
            info.model_copy(
                update={
                    "loaded": (info.host, info.id) in loaded,
                    "fits_on": [
                        h.host
                        for h in hosts
                        if info.estimate_bytes is not None
                        and info.id in h.models_on_disk
                        and (info.id in h.placed or h.free_bytes >= info.estimate_bytes)
                    ],
                }
            )
            for model_id in sorted(catalog)
            for info in catalog[model_id]
        ]

    def status(self) -> Status:
        """Hosts (RAM, VRAM, what is placed and free), placements, workers and queue lengths."""
        view = self._view()
        hosts = self._host_statuses(view)
        workers = self._worker_statuses()
        models = sorted({m for h in hosts for m in h.models_on_disk} | {w.model for w in workers})
        with self.connection.pipeline(transaction=False) as pipe:
            for host in hosts:
                pipe.hgetall(self.keys.assignments(host.host))
            for model in models:
                pipe.llen(self._queue(model).key)
            replies = pipe.execute()
        placements = [Assignment.model_validate_json(blob) for r in replies[: len(hosts)] for blob in r.values()]
        return Status(
            controller=view.controller if view is not None else None,
            hosts=hosts,
            placements=sorted(placements, key=lambda a: (a.model, a.host)),
            workers=workers,
            queues={m: int(n) for m, n in zip(models, replies[len(hosts) :], strict=True)},
        )

    def _view(self) -> ClusterView | None:
        blob = self.connection.get(self.keys.view)
        return ClusterView.model_validate_json(blob) if blob is not None else None

    def _host_statuses(self, view: ClusterView | None) -> list[HostStatus]:
        """The controller's view of the hosts, or, with no controller running, the raw reports."""
        if view is not None:
            return view.hosts
        host_ids = sorted(_text(m) for m in self.connection.smembers(self.keys.hosts))
        blobs = self.connection.mget([self.keys.host(h) for h in host_ids]) if host_ids else []
        reports = [HostReport.model_validate_json(b) for b in blobs if b is not None]
        return [
            HostStatus.of(
                r,
                free_bytes=min(r.capacity_bytes - sum(w.rss_bytes for w in r.workers), r.ram_available_bytes),
                placed={w.model: w.rss_bytes for w in r.workers},
            )
            for r in reports
        ]

    def _worker_statuses(self) -> list[WorkerStatus]:
        reports = self._worker_reports()
        with self.connection.pipeline(transaction=False) as pipe:
            for report in reports:
                pipe.llen(self._queue(report.model).key)
            lengths = pipe.execute()
        return [
            WorkerStatus(
                model=r.model,
                name=r.name,
                host=r.host,
                pid=r.pid,
                state=r.state,
                cpu_percent=r.cpu_percent,
                rss_bytes=r.rss_bytes,
                queue_length=int(length),
                current_job=r.current_job,
                loaded=r.loaded,
                jobs_done=r.jobs_done,
            )
            for r, length in zip(reports, lengths, strict=True)
        ]

    def queue_length(self, model: str) -> int:
        return int(self.connection.llen(self._queue(model).key))

    def close(self) -> None:
        self._pubsubs.close()
        self.connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------

    def _queue(self, model: str) -> Queue:
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = make_queue(self.connection, self.keys.queue_name(model))
        return queue

    def _read_catalog(self) -> dict[str, list[ModelInfo]]:
        host_ids = sorted(_text(m) for m in self.connection.smembers(self.keys.hosts))
        raw = self.connection.mget([self.keys.host(h) for h in host_ids]) if host_ids else []
        catalog: dict[str, list[ModelInfo]] = {}
        for blob in raw:
            if blob is None:
                continue  # expired: that host is gone
            for info in HostReport.model_validate_json(blob).models:
                catalog.setdefault(info.id, []).append(info)
        with self._lock:
            self._catalog, self._catalog_at = catalog, time.monotonic()
        return catalog

    def _require_model(self, model: str) -> None:
        with self._lock:
            fresh = time.monotonic() - self._catalog_at < CATALOG_CACHE_S
            known = model in self._catalog
        if fresh and known:
            return
        catalog = self._read_catalog()
        if model not in catalog:
            raise ModelNotFound(model, sorted(catalog))

    def _worker_reports(self) -> list[WorkerReport]:
        names = sorted(_text(m) for m in self.connection.smembers(self.keys.workers))
        if not names:
            return []
        blobs = self.connection.mget([self.keys.worker(n) for n in names])
        gone = [n for n, blob in zip(names, blobs, strict=True) if blob is None]
        if gone:
            self.connection.srem(self.keys.workers, *gone)
        return [WorkerReport.model_validate_json(b) for b in blobs if b is not None]

    def _enqueue(self, job: Job, job_id: str) -> None:
        queue = self._queue(job.model)
        rq_job = queue.create_job(
            rq_func_name(job.kind),
            kwargs=job.model_dump(mode="json"),
            job_id=job_id,
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            ttl=QUEUED_TTL,
            timeout=-1,
            description=f"{job.kind} on {job.model}",
        )
        with self.connection.pipeline() as pipe:
            queue.enqueue_job(rq_job, pipeline=pipe)
            pipe.exists(self.keys.alive(job.model))
            replies = pipe.execute()
        if not replies[-1]:
            # No worker serves this model: ask the controller to place one.
            self.connection.rpush(self.keys.demand, job.model)

    def _start(self, job: Job) -> tuple[str, Subscription]:
        self._require_model(job.model)
        job_id = uuid.uuid4().hex
        subscription = Subscription(self._pubsubs, self.keys.channel(job_id))
        try:
            self._enqueue(job, job_id)
        except BaseException:
            subscription.close()
            raise
        return job_id, subscription

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _run(self, job: Job, timeout: float | None) -> JobResult:
        deadline = self._deadline(timeout)
        job_id, subscription = self._start(job)
        try:
            for event in follow(self.connection, subscription, job_id, deadline):
                if isinstance(event, DoneEvent):
                    return event.result
                if isinstance(event, ErrorEvent):
                    raise _job_error(job_id, event)
        finally:
            subscription.close()
        raise HostlerError(f"job {job_id} ended without a result")  # pragma: no cover - follow always ends

    def _pieces(self, job: Job, timeout: float | None) -> Iterator[str]:
        # Submitted eagerly, so that the job is queued even before the first next().
        deadline = self._deadline(timeout)
        job_id, subscription = self._start(job)
        return _stream_pieces(self.connection, subscription, job_id, deadline)


def _stream_pieces(connection: redis.Redis, subscription: Subscription, job_id: str, deadline: float) -> Iterator[str]:
    emitted: list[str] = []
    try:
        for event in follow(connection, subscription, job_id, deadline):
            if isinstance(event, TokenEvent):
                emitted.append(event.text)
                yield event.text
            elif isinstance(event, ErrorEvent):
                raise _job_error(job_id, event)
            else:
                # After a gap the done event comes from the stored result: send what was missed.
                result = _completion(event.result)
                sent = "".join(emitted)
                if len(result.text) > len(sent):
                    yield result.text[len(sent) :]
    finally:
        subscription.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _job_error(job_id: str, event: ErrorEvent) -> JobFailed:
    if event.code == ErrorCode.CONTEXT_EXCEEDED:
        return ContextExceeded(job_id, event.code, event.message)
    if event.code == ErrorCode.NO_CAPACITY:
        return NoCapacity(job_id, event.code, event.message)
    return JobFailed(job_id, event.code, event.message)


def _completion(result: JobResult) -> CompletionResult:
    if not isinstance(result, CompletionResult):
        raise HostlerError(f"expected a completion result, got {result.kind}")
    return result


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "request"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown parameter {where!r}")
        else:
            parts.append(f"invalid {where}: {item['msg']}")
    return "; ".join(parts)


def _validated(model_cls: type[SamplingParams] | type[LoadParams], params: dict[str, Any]) -> Any:
    try:
        return model_cls(**params)
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from None


def _sampling(params: dict[str, Any]) -> SamplingParams:
    result: SamplingParams = _validated(SamplingParams, params)
    return result


def _build(job_cls: type[Job], **fields: Any) -> Job:
    try:
        built: Job = job_cls(**fields)
        return built
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from None
