"""The per-model worker process: load the model once, then serve its queue with up to N jobs in flight.

The model stays in memory between jobs (no fork per job). Generations share the engine's
slots (continuous batching): between two engine steps the worker publishes the new tokens,
ends the sequences that finished or must stop, and admits the next jobs in the queue's
order while slots are free. Token-count jobs are answered between steps; a load with other
params or an unload waits until the jobs in flight have ended. Each job is claimed,
validated again (anyone with Redis access can write to a queue), run, and ended exactly
once as finished or failed, with a done or error event on its channel.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType

import psutil
import redis
from hostler.client._errors import ConnectionFailed
from hostler.schemas import (
    PRIORITIES,
    ChatJob,
    CompletionJob,
    EmbeddingJob,
    ErrorCode,
    FinishReason,
    Job,
    JobResult,
    Keys,
    LoadJob,
    LoadParams,
    TokenCountJob,
    TokenCountResult,
    UnloadJob,
    UnloadResult,
    WorkerReport,
    WorkerState,
)
from hostler.worker.engines.protocol import EngineError, EngineFactory, GenerationRequest, SlotEngine
from hostler.worker.models.registry import ModelManifest
from hostler.worker.outage import REDIS_OUTAGE, OutageBackoff
from rq.serializers import JSONSerializer
from rq.worker import Worker as RqWorker

from .embeddings import Embeddings
from .ending import JobEnds
from .events import DEFAULT_STREAM_INTERVAL_S, EventSender, JobEvents
from .heartbeat import Heartbeat
from .jobstore import Claimed, JobStore
from .model import HeldModel
from .payload import parse_job
from .running import Running

log = logging.getLogger("hostler.worker")


class ModelWorker:
    def __init__(
        self,
        *,
        connection: redis.Redis,
        keys: Keys,
        manifest: ModelManifest,
        engine_factory: EngineFactory,
        host: str | None = None,
        idle_exit_s: float | None = None,
        preload: bool = False,
        parent_pid: int | None = None,
        stream_interval_s: float = DEFAULT_STREAM_INTERVAL_S,
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.manifest = manifest
        self.host = host or socket.gethostname()
        self.idle_exit_s = idle_exit_s
        self.preload = preload
        # Started by a host agent: when it dies, this worker ends too, as on a dead machine.
        self.parent_pid = parent_pid
        self.name = f"hostler.{self.host}.{manifest.id}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        queue_names = [keys.queue_name(manifest.id, p) for p in PRIORITIES]
        self.rq_worker = RqWorker(queue_names, connection=connection, name=self.name, serializer=JSONSerializer)
        self.store = JobStore(connection, keys, manifest.id, self.rq_worker, keys.taken(manifest.id, self.name))
        self.events = EventSender(connection, stream_interval_s)
        self.model = HeldModel(connection, keys, manifest, engine_factory)
        self.state: WorkerState = "starting"
        # Generations in flight by engine handle, oldest first.
        self.running: dict[int, Running] = {}
        # A load with other params or an unload, claimed and waiting for the generations to end.
        self.deferred: tuple[Claimed, LoadJob | UnloadJob] | None = None
        # Embedding jobs in flight, a packed decode of the oldest per loop pass.
        self.embeddings = Embeddings()
        self.prompt_received = 0
        self.prompt_evaluated = 0
        self.started_at = time.time()
        self._exit_after = False
        self._graceful = threading.Event()
        self._hard = threading.Event()
        self.ends = JobEnds(self.store, self.events, keys, self.name, self._hard)
        self._process = psutil.Process()
        self.heart = Heartbeat(connection, keys, manifest.id, self.rq_worker, self.store, self.report, self._in_flight)

    @property
    def engine(self) -> SlotEngine | None:
        return self.model.engine

    @property
    def load_params(self) -> LoadParams | None:
        return self.model.params

    @property
    def loads(self) -> int:
        return self.model.loads

    # -- lifecycle ----------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            # First signal: finish the jobs in flight, then exit. Second: stop them now.
            if self._graceful.is_set():
                self._hard.set()
            self._graceful.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def stop(self, *, hard: bool = False) -> None:
        self._graceful.set()
        if hard:
            self._hard.set()

    def run(self) -> None:
        self.rq_worker.register_birth()
        self.state = "idle"
        self._heartbeat()
        self.heart.start(
            self._graceful, lambda: bool(self.running or self.embeddings or self.deferred), self.parent_pid
        )
        if self.preload:
            self._preload()
        idle_since = time.monotonic()
        outage = OutageBackoff(log)
        try:
            while self.running or self.embeddings or self.deferred or not (self._graceful.is_set() or self._exit_after):
                try:
                    took = self._admit()
                    if self.running:
                        self._step()
                    if self.embeddings:
                        self._embed_step()
                    elif self.deferred is not None and not self.running:
                        self._serve_deferred()
                    outage.succeeded()
                except REDIS_OUTAGE as exc:
                    outage.failed(exc)
                    continue
                if took or self.running or self.embeddings:
                    idle_since = time.monotonic()
                elif self.idle_exit_s is not None and time.monotonic() - idle_since > self.idle_exit_s:
                    break
        finally:
            self._shutdown()

    def _preload(self) -> None:
        try:
            self.state = "loading"
            self.model.load(self.model.desired_params(), remember=False)
        except EngineError as exc:
            # Jobs will try again and fail with this reason; the worker stays to answer them.
            log.warning("preloading %s failed: %s", self.manifest.id, exc)
        self.state = "idle"
        self._heartbeat()

    def _shutdown(self) -> None:
        self.state = "stopping"
        self._graceful.set()
        self.events.close()
        try:
            self.store.give_back()
        except (redis.RedisError, ConnectionFailed):
            log.warning("could not return a prefetched job; the host agent requeues it")
        self.model.close()
        try:
            with self.connection.pipeline() as pipe:
                pipe.delete(self.keys.worker(self.name))
                pipe.srem(self.keys.workers, self.name)
                # Without this the controller would wait for the key to expire before it
                # starts a new worker for jobs that arrive after this one exits.
                pipe.delete(self.keys.alive(self.manifest.id))
                pipe.execute()
            self.rq_worker.register_death()
        except (redis.RedisError, ConnectionFailed):
            log.warning("could not deregister %s from redis", self.name)

    # -- admitting jobs -------------------------------------------------------------

    def _admit(self) -> bool:
        """Claims and starts jobs while a slot is free; True if it took any."""
        took = False
        while self.deferred is None and not (self._graceful.is_set() or self._exit_after):
            engine = self.model.engine
            # An embedding job in flight holds a slot's place in admission too, so that a flood of
            # them cannot all be claimed ahead of an interactive job still in the queue.
            busy = self.running or self.embeddings
            if busy and engine is not None and engine.free_slots <= len(self.embeddings):
                break
            # With generations in flight the look must not wait: their next step is due.
            claimed = self.store.claim(timeout=0 if self.running or self.embeddings else 1.0)
            if claimed is None:
                break
            took = True
            self._begin(claimed)
        return took

    def _begin(self, claimed: Claimed) -> None:
        """Ends at once what needs no slot; starts a generation; defers what must wait for the others."""
        publisher = self.ends.publisher(claimed)
        try:
            job = parse_job(claimed, self.manifest.id)
            claimed.kind = job.kind
            if job.watched and not claimed.waited_for:
                self.ends.cancel(
                    claimed, publisher, ErrorCode.CLIENT_GONE, "its client stopped waiting before a worker took it"
                )
                return
            if job.start_within_s is not None and not claimed.in_time:
                message = f"not started within its start deadline of {job.start_within_s:g} s"
                self.ends.cancel(claimed, publisher, ErrorCode.EXPIRED, message)
                return
            if isinstance(job, CompletionJob | ChatJob):
                self._start_generation(claimed, job, publisher)
                return
            if isinstance(job, EmbeddingJob):
                self._start_embedding(claimed, job, publisher)
                return
            if isinstance(job, LoadJob | UnloadJob) and (self.running or self.embeddings) and self._must_wait(job):
                self.deferred = (claimed, job)
                return
            self.ends.succeed(claimed, publisher, self._dispatch(job))
        except Exception as exc:  # noqa: BLE001 - one bad job must not take the worker down
            self.ends.failed(claimed, publisher, exc)

    def _must_wait(self, job: LoadJob | UnloadJob) -> bool:
        return isinstance(job, UnloadJob) or self.model.needs_reload(job.params)

    def _serve_deferred(self) -> None:
        assert self.deferred is not None
        claimed, job = self.deferred
        self.deferred = None
        publisher = self.ends.publisher(claimed)
        try:
            self.ends.succeed(claimed, publisher, self._dispatch(job))
        except Exception as exc:  # noqa: BLE001 - one bad job must not take the worker down
            self.ends.failed(claimed, publisher, exc)

    def _start_generation(self, claimed: Claimed, job: CompletionJob | ChatJob, publisher: JobEvents) -> None:
        if self.model.engine is None:
            self.state = "loading"
        engine = self.model.get()
        if isinstance(job, CompletionJob):
            request = GenerationRequest(params=job.params, prompt=job.prompt)
        else:
            request = GenerationRequest(
                params=job.params,
                messages=job.messages,
                tools=job.tools,
                tool_choice=job.effective_tool_choice(),
                parallel_tool_calls=job.parallel_tool_calls,
            )
        seq = engine.start(request)
        stop_at = time.monotonic() + job.timeout_s if job.timeout_s is not None else None
        self.running[seq] = Running(claimed, job, publisher, seq, stop_at)
        self.state = "busy"

    def _start_embedding(self, claimed: Claimed, job: EmbeddingJob, publisher: JobEvents) -> None:
        if self.model.engine is None:
            self.state = "loading"
        self.embeddings.start(self.model.get(), claimed, job, publisher)
        self.state = "busy"

    def _dispatch(self, job: Job) -> JobResult:
        if isinstance(job, LoadJob):
            self.state = "loading"
            result = self.model.load(job.params)
            self._heartbeat()
            return result
        if isinstance(job, UnloadJob):
            was_loaded = self.model.unload()
            # An unload asks for the memory back: the controller must not place it again.
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.delete(self.keys.spec(self.manifest.id))
                pipe.hdel(self.keys.assignments(self.host), self.manifest.id)
                pipe.execute()
            self._exit_after = self.store.waiting() == 0
            return UnloadResult(model=self.manifest.id, was_loaded=was_loaded)
        assert isinstance(job, TokenCountJob)
        if self.model.engine is None:
            self.state = "loading"
        return TokenCountResult(model=self.manifest.id, count=self.model.get().count_tokens(job.text))

    # -- one step of the generations in flight ----------------------------------------

    def _step(self) -> None:
        engine = self.model.engine
        assert engine is not None
        try:
            outputs = engine.step()
        except Exception as exc:  # noqa: BLE001 - the batch is shared: every sequence in it fails
            log.exception("an engine step failed; failing the %d job(s) in flight", len(self.running))
            for failed in list(self.running.values()):
                self.running.pop(failed.seq, None)
                self.ends.failed(failed.claimed, failed.publisher, exc)
            self.model.close()
            return
        for output in outputs:
            running = self.running.get(output.seq)
            if running is None:
                continue
            if running.last is None:
                self.prompt_received += output.prompt_tokens
                self.prompt_evaluated += output.prompt_tokens - output.cached_tokens
            running.take(output)
            if output.piece and running.job.stream and not running.claimed.lost:
                running.publisher.token(output.piece, running.unsent_logprobs())
            if output.finish_reason is not None:
                del self.running[output.seq]
                self._finish(running, output.finish_reason)
        for running in self.running.values():
            if running.claimed.lost:
                running.publisher.drop_held()  # as its tokens are not sent once it is lost
            else:
                running.publisher.tick()
        self._stop_what_must_stop(engine)
        if not self.running:
            self.state = "idle"
            # Said at once, not at the next beat: a controller looking for an idle model to
            # evict must not take this one for busy, nor fail a placement that would fit.
            self._heartbeat()

    def _embed_step(self) -> None:
        self.embeddings.step(self.manifest.id, self.ends, stopping_now=self._hard.is_set())
        if not (self.running or self.embeddings):
            self.state = "idle"
            self._heartbeat()

    def _stop_what_must_stop(self, engine: SlotEngine) -> None:
        now = time.monotonic()
        for running in list(self.running.values()):
            job = running.job
            timed_out = running.stop_at is not None and now > running.stop_at
            # A job with a waiting client that stopped listening; a submitted job nobody streams runs on.
            # A job taken from this worker (frozen past its heartbeat) is someone else's now.
            if not (
                timed_out
                or self._hard.is_set()
                or running.claimed.lost
                or ((job.stream or job.watched) and running.publisher.abandoned())
            ):
                continue
            engine.cancel(running.seq)
            del self.running[running.seq]
            if timed_out:
                done = running.last.completion_tokens if running.last is not None else 0
                message = f"generation ran past the job's timeout of {job.timeout_s:g} s ({done} tokens generated)"
                self.ends.fail(running.claimed, running.publisher, ErrorCode.TIMEOUT, message)
            else:
                self._finish(running, "canceled")

    def _finish(self, running: Running, finish_reason: FinishReason) -> None:
        self.ends.succeed(running.claimed, running.publisher, running.result(self.manifest.id, finish_reason))

    # -- heartbeats ---------------------------------------------------------------

    def _busy(self) -> bool:
        return bool(self.running or self.embeddings or self.deferred)

    def _in_flight(self) -> list[Claimed]:
        held = [running.claimed for running in list(self.running.values())]
        held += [run.claimed for run in self.embeddings]
        deferred = self.deferred
        return held + [deferred[0]] if deferred is not None else held

    def report(self) -> WorkerReport:
        in_flight = self._in_flight()
        engine = self.model.engine
        params = self.model.params
        return WorkerReport(
            name=self.name,
            model=self.manifest.id,
            host=self.host,
            pid=os.getpid(),
            state=self.state,
            cpu_percent=self._process.cpu_percent(interval=None),
            rss_bytes=self._process.memory_info().rss,
            current_job=in_flight[0].job.id if in_flight else None,
            running_jobs=[claimed.job.id for claimed in in_flight],
            slots=engine.n_slots if engine is not None else 1,
            prompt_tokens_received=self.prompt_received,
            prompt_tokens_evaluated=self.prompt_evaluated,
            loaded=engine is not None,
            load_params=params.model_dump() if params is not None else None,
            jobs_done=self.ends.jobs_done,
            loads=self.loads,
            last_job_at=self.ends.last_job_at,
            started_at=self.started_at,
            mean_job_s=self.ends.mean_job_s,
            updated_at=time.time(),
        )

    def _heartbeat(self) -> None:
        self.heart.beat()
