"""The synchronous Python client: validate, enqueue on the model's queue, follow the stream."""

from __future__ import annotations

import json
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
    MAX_REQUEST_BYTES,
    Assignment,
    ChatJob,
    ChatMessage,
    ClusterView,
    CompletionJob,
    CompletionResult,
    DoneEvent,
    ErrorEvent,
    HostReport,
    HostStatus,
    Job,
    JobResult,
    Keys,
    Lease,
    LoadJob,
    LoadParams,
    LoadResult,
    ModelInfo,
    ModelSpec,
    Priority,
    SamplingParams,
    Status,
    TokenCountJob,
    TokenCountResult,
    UnloadJob,
    UnloadResult,
    WorkerReport,
    WorkerStatus,
    parse_duration,
    rq_func_name,
)
from pydantic import ValidationError
from rq.job import Retry
from rq.queue import Queue

from ._connection import PREFIX_ENV, connect
from ._errors import HostlerError, InvalidRequest, ModelNotFound, QueueFull
from ._events import PubSubPool, Subscription, Waiter, follow
from ._handle import JobHandle, job_error
from ._options import Options, seconds
from ._pieces import Stream, completion, stream_pieces
from ._rqstore import (
    DEFAULT_MAX_QUEUE,
    ENQUEUE_SCRIPT,
    FAILURE_TTL,
    QUEUED_TTL,
    RESULT_TTL,
    fetch_job,
    make_queue,
    queue_keys,
    waiting_jobs,
)

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
        job = _build(
            CompletionJob, model=model, prompt=prompt, params=_sampling(params), timeout_s=seconds(job_timeout)
        )
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
        job = _build(
            CompletionJob,
            model=model,
            prompt=prompt,
            params=_sampling(params),
            stream=True,
            timeout_s=seconds(job_timeout),
        )
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
        job = _build(
            ChatJob,
            model=model,
            messages=list(messages),
            params=_sampling(params),
            stream=stream,
            timeout_s=seconds(job_timeout),
        )
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
        **params: Any,
    ) -> JobHandle:
        """Enqueue a completion (prompt) or chat (messages) without waiting; returns its handle.

        Nobody waits on a submitted job, so it runs even if this process exits; it is a
        batch job unless priority says otherwise. Raises QueueFull when the queue is at its bound.
        """
        if (prompt is None) == (messages is None):
            raise InvalidRequest("submit takes a prompt or messages, not both or neither")
        options = Options.of(priority, start_within, retries)
        job: Job
        if prompt is not None:
            job = _build(
                CompletionJob, model=model, prompt=prompt, params=_sampling(params), timeout_s=seconds(job_timeout)
            )
        else:
            job = _build(
                ChatJob,
                model=model,
                messages=list(messages or []),
                params=_sampling(params),
                timeout_s=seconds(job_timeout),
            )
        self._require_model(job.model)
        job_id = uuid.uuid4().hex
        self._enqueue(job, job_id, options, waiting_ms=0)
        return JobHandle(self.connection, self.keys, job_id, job.model)

    def job(self, job_id: str) -> JobHandle:
        """The handle of a job submitted earlier (by any client)."""
        rq_job = fetch_job(self.connection, job_id)
        if rq_job is None:
            raise HostlerError(f"job {job_id} does not exist (it ended more than its TTL ago, or never was)")
        model = self.keys.model_of_queue(rq_job.origin or "")
        if model is None:
            raise HostlerError(f"job {job_id} is not on a hostler queue (origin {rq_job.origin!r})")
        return JobHandle(self.connection, self.keys, job_id, model)

    def count_tokens(self, model: str, text: str, *, timeout: float | None = None) -> int:
        """Tokens the model makes of text, exactly as complete() counts usage.prompt_tokens."""
        result = self._run(_build(TokenCountJob, model=model, text=text), timeout, Options())
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
        result = self._run(job, timeout, Options())
        assert isinstance(result, LoadResult)
        return result

    def unload(self, model: str, *, timeout: float | None = None) -> UnloadResult:
        """Free the model's memory once the jobs queued before this have run."""
        result = self._run(_build(UnloadJob, model=model), timeout, Options())
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
                for key in queue_keys(self.keys, model):
                    pipe.llen(key)
            replies = pipe.execute()
        lengths = [int(n) for n in replies[len(hosts) :]]
        placements = [Assignment.model_validate_json(blob) for r in replies[: len(hosts)] for blob in r.values()]
        return Status(
            controller=view.controller if view is not None else None,
            hosts=hosts,
            placements=sorted(placements, key=lambda a: (a.model, a.host)),
            workers=workers,
            queues={m: lengths[2 * i] + lengths[2 * i + 1] for i, m in enumerate(models)},
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
        waiting = {model: waiting_jobs(self.connection, self.keys, model) for model in {r.model for r in reports}}
        return [
            WorkerStatus(
                model=r.model,
                name=r.name,
                host=r.host,
                pid=r.pid,
                state=r.state,
                cpu_percent=r.cpu_percent,
                rss_bytes=r.rss_bytes,
                queue_length=waiting[r.model],
                current_job=r.current_job,
                loaded=r.loaded,
                jobs_done=r.jobs_done,
            )
            for r in reports
        ]

    def queue_length(self, model: str) -> int:
        """Jobs waiting for the model, both priority classes together."""
        return waiting_jobs(self.connection, self.keys, model)

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

    def _enqueue(self, job: Job, job_id: str, options: Options, *, waiting_ms: int) -> None:
        """Writes the job and pushes it on its class's queue in one atomic step, or raises QueueFull."""
        if options.start_within_s is not None or waiting_ms:
            job = job.model_copy(update={"start_within_s": options.start_within_s, "watched": bool(waiting_ms)})
        kwargs = job.model_dump(mode="json")
        size = len(json.dumps(kwargs))
        if size > MAX_REQUEST_BYTES:
            raise InvalidRequest(f"request is {size} bytes; the limit is {MAX_REQUEST_BYTES} bytes")
        queue = self._queue(job.model, options.priority)
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
        keys = self.keys
        accepted, length, bound, alive = self._enqueue_script(
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
        if not accepted:
            raise QueueFull(job.model, int(bound), int(length), self._retry_after(job.model, int(length), int(bound)))
        if not alive:
            # No worker serves this model: ask the controller to place one.
            self.connection.rpush(self.keys.demand, job.model)

    def _retry_after(self, model: str, length: int, bound: int) -> float:
        """About how long this model's workers take to run the jobs over the bound, plus one."""
        reports = [r for r in self._worker_reports() if r.model == model]
        times = [r.mean_job_s for r in reports if r.mean_job_s]
        if not times:
            return 1.0
        return max(1.0, (length - bound + 1) * (sum(times) / len(times)) / len(reports))

    def _start(self, job: Job, deadline: float, options: Options) -> tuple[str, Subscription, Waiter]:
        self._require_model(job.model)
        job_id = uuid.uuid4().hex
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
