"""The per-model worker process: load the model once, then serve its queue in FIFO order.

The model stays in memory between jobs (no fork per job). Each job is claimed,
validated again (anyone with Redis access can write to a queue), run, and ended
exactly once as finished or failed, with a done or error event on its channel.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from types import FrameType

import psutil
import redis
from hostler.client._errors import ConnectionFailed
from hostler.schemas import (
    JOB_ADAPTER,
    MAX_REQUEST_BYTES,
    PRIORITIES,
    RQ_FUNC_PREFIX,
    ChatJob,
    CompletionJob,
    CompletionResult,
    ErrorCode,
    Job,
    JobResult,
    Keys,
    LoadJob,
    LoadParams,
    LoadResult,
    ModelSpec,
    TokenCountJob,
    TokenCountResult,
    UnloadJob,
    UnloadResult,
    Usage,
    WorkerReport,
    WorkerState,
)
from hostler.worker.engines.protocol import Engine, EngineError, EngineFactory
from hostler.worker.models.registry import ModelManifest
from pydantic import ValidationError
from rq.serializers import JSONSerializer
from rq.worker import Worker as RqWorker

from .events import EventSender, JobEvents
from .jobstore import Claimed, JobStore, describe_payload

log = logging.getLogger("hostler.worker")

HEARTBEAT_S = 2.0
REPORT_TTL_S = 10
# A streaming job whose channel has had no subscriber this long is abandoned.
LISTENER_GRACE_S = 2.0


class InvalidJob(Exception):
    """A queue entry that is not a hostler job; it fails, it is never executed."""


class JobTimeout(Exception):
    """A generation ran past its job's timeout_s."""


def _check_size(raw: dict[bytes, bytes]) -> None:
    """Refuses a payload over MAX_REQUEST_BYTES before anything decodes it (zip bombs included)."""
    data = raw.get(b"data", b"")
    if len(data) > MAX_REQUEST_BYTES:
        raise InvalidJob(f"request is {len(data)} bytes; the limit is {MAX_REQUEST_BYTES} bytes")
    try:
        inflated = zlib.decompressobj().decompress(data, MAX_REQUEST_BYTES + 1)
    except zlib.error:
        return  # stored uncompressed (rq accepts both); its length was checked above
    if len(inflated) > MAX_REQUEST_BYTES:
        raise InvalidJob(f"request is over {MAX_REQUEST_BYTES} bytes once decompressed; that is the limit")


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
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.manifest = manifest
        self.engine_factory = engine_factory
        self.host = host or socket.gethostname()
        self.idle_exit_s = idle_exit_s
        self.preload = preload
        # Started by a host agent: when it dies, this worker ends too, as on a dead machine.
        self.parent_pid = parent_pid
        self.name = f"hostler.{self.host}.{manifest.id}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        queue_names = [keys.queue_name(manifest.id, p) for p in PRIORITIES]
        self.rq_worker = RqWorker(queue_names, connection=connection, name=self.name, serializer=JSONSerializer)
        self.store = JobStore(connection, keys, manifest.id, self.rq_worker, keys.taken(manifest.id, self.name))
        self.events = EventSender(connection)
        self.engine: Engine | None = None
        self.load_params: LoadParams | None = None
        self.state: WorkerState = "starting"
        self.current: Claimed | None = None
        self.jobs_done = 0
        self.loads = 0
        self.last_job_at: float | None = None
        self.mean_job_s: float | None = None
        self.started_at = time.time()
        self._graceful = threading.Event()
        self._hard = threading.Event()
        self._process = psutil.Process()
        self._heartbeat_thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            # First signal: finish the running job, then exit. Second: stop it now.
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
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._heartbeat_thread.start()
        if self.preload:
            self._preload()
        idle_since = time.monotonic()
        backoff = 0.1
        try:
            while not self._graceful.is_set():
                try:
                    claimed = self.store.claim(timeout=1.0)
                    backoff = 0.1
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    log.warning("redis unavailable (%s); retrying in %.1fs", exc, backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if claimed is None:
                    if self.idle_exit_s is not None and time.monotonic() - idle_since > self.idle_exit_s:
                        break
                    continue
                exit_after = self._serve(claimed)
                idle_since = time.monotonic()
                if exit_after:
                    break
        finally:
            self._shutdown()

    def _preload(self) -> None:
        try:
            self._load(self._desired_params(), remember=False)
        except EngineError as exc:
            # Jobs will try again and fail with this reason; the worker stays to answer them.
            log.warning("preloading %s failed: %s", self.manifest.id, exc)
            self.state = "idle"
        else:
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
        if self.engine is not None:
            self.engine.close()
            self.engine = None
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

    # -- one job ------------------------------------------------------------------

    def _serve(self, claimed: Claimed) -> bool:
        """Runs one claimed job to its end; True when the worker should exit afterwards."""
        self.current = claimed
        self.state = "busy"
        publisher = JobEvents(self.events, self.keys.channel(claimed.job.id), LISTENER_GRACE_S)
        exit_after = False
        started = time.monotonic()
        try:
            job = self._parse(claimed)
            claimed.kind = job.kind
            if job.watched and not claimed.waited_for:
                message = "its client stopped waiting before a worker took it"
                self._cancel(claimed, publisher, ErrorCode.CLIENT_GONE, message)
                return False
            if job.start_within_s is not None and not claimed.in_time:
                message = f"not started within its start deadline of {job.start_within_s:g} s"
                self._cancel(claimed, publisher, ErrorCode.EXPIRED, message)
                return False
            result = self._dispatch(job, publisher, claimed)
            if isinstance(job, UnloadJob):
                exit_after = self.store.waiting() == 0
            done = publisher.done(result)
            self._end(
                claimed, lambda: self.store.succeed(claimed, result.model_dump(mode="json"), publisher.channel, done)
            )
        except InvalidJob as exc:
            self._fail(claimed, publisher, ErrorCode.INVALID_JOB, str(exc))
        except EngineError as exc:
            self._fail(claimed, publisher, exc.code, str(exc))
        except JobTimeout as exc:
            self._fail(claimed, publisher, ErrorCode.TIMEOUT, str(exc))
        except (redis.RedisError, ConnectionFailed):
            raise
        except Exception as exc:  # noqa: BLE001 - one bad job must not take the worker down
            log.exception("job %s failed", claimed.job.id)
            self._fail(claimed, publisher, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            self.current = None
            self.jobs_done += 1
            self.last_job_at = time.time()
            took = time.monotonic() - started
            self.mean_job_s = took if self.mean_job_s is None else 0.8 * self.mean_job_s + 0.2 * took
            self.state = "idle"
        return exit_after

    def _fail(self, claimed: Claimed, publisher: JobEvents, code: str, message: str) -> None:
        event = publisher.error(code, message)
        self._end(claimed, lambda: self.store.fail(claimed, code, message, publisher.channel, event))

    def _cancel(self, claimed: Claimed, publisher: JobEvents, code: str, message: str) -> None:
        self._end(claimed, lambda: self.store.cancel(claimed, code, message, publisher.channel))

    def _end(self, claimed: Claimed, write: Callable[[], bool]) -> None:
        """Stores a job's end, waiting out a Redis restart instead of exiting.

        The outcome exists only in this process: exiting would turn a finished generation into
        worker_died. Only a second SIGTERM gives up. The write is refused when the job is no
        longer this worker's (a janitor that judged it dead failed or retried it), and also when
        it is sent again after a lost reply: either way the job has ended once.
        """
        claimed.ending = True
        backoff = 0.1
        while True:
            try:
                if not write():
                    log.warning(
                        "job %s had already ended or been queued again when %s came to end it; its outcome stands",
                        claimed.job.id,
                        self.name,
                    )
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self._hard.is_set():
                    raise
                log.warning("could not store the end of job %s (%s); retrying in %.1fs", claimed.job.id, exc, backoff)
                self._hard.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _parse(self, claimed: Claimed) -> Job:
        if not claimed.raw:
            raise InvalidJob(f"job {claimed.job.id} has no record (it expired or was deleted)")
        _check_size(claimed.raw)
        try:
            claimed.job.restore(claimed.raw)
            func_name = claimed.job.func_name
            args, kwargs = claimed.job.args, claimed.job.kwargs
        except Exception as exc:  # noqa: BLE001 - any undecodable payload is the same error
            raise InvalidJob(
                f"job payload is not JSON of a hostler job ({type(exc).__name__}); "
                f"hostler never unpickles payloads (record fields: {describe_payload(claimed.raw)})"
            ) from None
        if not isinstance(func_name, str) or not func_name.startswith(RQ_FUNC_PREFIX):
            raise InvalidJob(f"unknown job kind {str(func_name)[:100]!r}: hostler workers run only hostler jobs")
        if args or not isinstance(kwargs, dict):
            raise InvalidJob("job payload must be keyword arguments only")
        try:
            job = JOB_ADAPTER.validate_python(kwargs)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "payload"
            raise InvalidJob(f"invalid job field {where}: {first['msg']}") from None
        if func_name != RQ_FUNC_PREFIX + job.kind:
            raise InvalidJob(f"job kind {job.kind!r} does not match its function {func_name!r}")
        if job.model != self.manifest.id:
            raise InvalidJob(f"job for model {job.model!r} is on the queue of {self.manifest.id!r}")
        return job

    def _dispatch(self, job: Job, publisher: JobEvents, claimed: Claimed) -> JobResult:
        if isinstance(job, LoadJob):
            return self._load(job.params)
        if isinstance(job, UnloadJob):
            was_loaded = self.engine is not None
            self._unload()
            # An unload asks for the memory back: the controller must not place it again.
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.delete(self.keys.spec(self.manifest.id))
                pipe.hdel(self.keys.assignments(self.host), self.manifest.id)
                pipe.execute()
            return UnloadResult(model=self.manifest.id, was_loaded=was_loaded)
        engine = self._engine()
        if isinstance(job, TokenCountJob):
            return TokenCountResult(model=self.manifest.id, count=engine.count_tokens(job.text))
        return self._generate(engine, job, publisher, claimed)

    def _generate(
        self, engine: Engine, job: CompletionJob | ChatJob, publisher: JobEvents, claimed: Claimed
    ) -> CompletionResult:
        stop_at = time.monotonic() + job.timeout_s if job.timeout_s is not None else None
        timed_out = False

        def should_stop() -> bool:
            nonlocal timed_out
            if stop_at is not None and time.monotonic() > stop_at:
                timed_out = True
                return True
            # A job with a waiting client that stopped listening; a submitted job nobody streams runs on.
            # A job taken from this worker (frozen past its heartbeat) is someone else's now.
            return self._hard.is_set() or claimed.lost or ((job.stream or job.watched) and publisher.abandoned())

        if isinstance(job, CompletionJob):
            generation = engine.complete(job.prompt, job.params, should_stop)
        else:
            generation = engine.chat(job.messages, job.params, should_stop)
        for piece in generation:
            claimed.clock.piece()
            if job.stream and not claimed.lost:
                publisher.token(piece)
        if timed_out:
            raise JobTimeout(
                f"generation ran past the job's timeout of {job.timeout_s:g} s "
                f"({generation.completion_tokens} tokens generated)"
            )
        return CompletionResult(
            model=self.manifest.id,
            text=generation.text,
            finish_reason=generation.finish_reason,
            usage=Usage(prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens),
        )

    # -- the model ----------------------------------------------------------------

    def _desired_params(self) -> LoadParams:
        """The last successful load's params, else those of a pending `client.load`, else model.yaml's."""
        stored, spec = self.connection.mget([self.keys.load_params(self.manifest.id), self.keys.spec(self.manifest.id)])
        if stored:
            try:
                return LoadParams.model_validate_json(stored)
            except ValidationError:
                log.warning("ignoring invalid stored load params for %s", self.manifest.id)
        if spec:
            try:
                return ModelSpec.model_validate_json(spec).params
            except ValidationError:
                log.warning("ignoring an invalid spec for %s", self.manifest.id)
        return self.manifest.load

    def _engine(self) -> Engine:
        if self.engine is None:
            self._load(self._desired_params(), remember=False)
        assert self.engine is not None
        return self.engine

    def _load(self, params: LoadParams, *, remember: bool = True) -> LoadResult:
        if self.engine is not None and self.load_params == params:
            return LoadResult(model=self.manifest.id, params=params, reloaded=False, seconds=0.0)
        # Only the engine goes: the remembered params are what the next worker loads with,
        # and a preload (remember=False) must not erase them.
        self._close_engine()
        self.state = "loading"
        started = time.monotonic()
        self.engine = self.engine_factory(self.manifest.path, params, chat_template=self.manifest.chat_template)
        self.load_params = params
        self.loads += 1
        # Loading happens inside a job (a load job, or the first job that needs the model).
        self.state = "busy"
        if remember:
            self.connection.set(self.keys.load_params(self.manifest.id), params.model_dump_json())
        self._heartbeat()
        return LoadResult(
            model=self.manifest.id, params=params, reloaded=True, seconds=round(time.monotonic() - started, 4)
        )

    def _unload(self) -> None:
        self._close_engine()
        self.connection.delete(self.keys.load_params(self.manifest.id))

    def _close_engine(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
            self.load_params = None

    # -- heartbeats ---------------------------------------------------------------

    def report(self) -> WorkerReport:
        current = self.current
        return WorkerReport(
            name=self.name,
            model=self.manifest.id,
            host=self.host,
            pid=os.getpid(),
            state=self.state,
            cpu_percent=self._process.cpu_percent(interval=None),
            rss_bytes=self._process.memory_info().rss,
            current_job=current.job.id if current is not None else None,
            loaded=self.engine is not None,
            load_params=self.load_params.model_dump() if self.load_params is not None else None,
            jobs_done=self.jobs_done,
            loads=self.loads,
            last_job_at=self.last_job_at,
            started_at=self.started_at,
            mean_job_s=self.mean_job_s,
            updated_at=time.time(),
        )

    def _heartbeat(self) -> None:
        report = self.report()
        current = self.current
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.worker(self.name), report.model_dump_json(), ex=REPORT_TTL_S)
            pipe.sadd(self.keys.workers, self.name)
            pipe.set(self.keys.alive(self.manifest.id), self.name, ex=REPORT_TTL_S)
            self.rq_worker.heartbeat(timeout=REPORT_TTL_S * 6, pipeline=pipe)
            # rq's worker state follows the heartbeat, not every job: two commands saved per job.
            self.rq_worker.set_state("busy" if current is not None else "idle", pipeline=pipe)
            if current is not None:
                self.store.holds(current, pipe)
            replies = pipe.execute()
        if current is not None and replies[-1] is None and not (current.lost or current.ending):
            # Back from a freeze (SIGSTOP, a stalled VM) longer than the report's TTL: the janitor
            # ended or requeued the job meanwhile. Generating on would only be thrown away.
            log.warning(
                "job %s was taken from %s while it was not heartbeating; dropping it", current.job.id, self.name
            )
            current.lost = True

    def _heartbeat_loop(self) -> None:
        while not self._graceful.wait(HEARTBEAT_S):
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.warning("host agent %d is gone; finishing the running job and exiting", self.parent_pid)
                self._graceful.set()
                break
            try:
                self._heartbeat()
            except (redis.RedisError, ConnectionFailed) as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:  # noqa: BLE001 - the heartbeat thread must outlive surprises
                log.exception("heartbeat crashed")
