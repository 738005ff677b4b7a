"""The worker's side of rq's job records: claim a job, then end it, one round trip each.

rq's own worker spends several round trips of bookkeeping per job; hostler keeps rq's
record layout (queue list, intermediate queue, started/finished/failed registries,
results stream) so `rq info` and rq-dashboard stay truthful, but batches each step
into one pipeline.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis
from hostler.client._rqstore import FAILURE_TTL, RESULT_TTL, encode_failure, fetch_job, make_queue
from hostler.schemas import ErrorCode, ErrorEvent, Keys
from rq.executions import Execution
from rq.job import Job as RqJob
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import utcformat
from rq.worker import Worker as RqWorker
from rq.worker_registration import clean_worker_registry, get_keys

# How long a started job stays in the started registry without a heartbeat.
STARTED_TTL = 60


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Claimed:
    """A job taken off the queue and marked started; `raw` is its unparsed record."""

    job: RqJob
    execution: Execution
    raw: dict[bytes, bytes]
    started_at: datetime


class JobStore:
    def __init__(self, connection: redis.Redis, queue_name: str, rq_worker: RqWorker, taken_key: str) -> None:
        self.connection = connection
        self.queue = make_queue(connection, queue_name)
        # Per worker, not rq's shared intermediate list: replicas on several hosts share a
        # queue, and only a dead worker's own taken ids may go back on it.
        self.taken_key = taken_key
        self.rq_worker = rq_worker
        # rq builds a new registry object (and re-resolves its serializer) on every access.
        self.finished = self.queue.finished_job_registry
        self.failed = self.queue.failed_job_registry
        # The id taken with the previous job's end, so a busy worker skips one round trip.
        self._prefetched: str | None = None

    @property
    def worker_name(self) -> str:
        return str(self.rq_worker.name)

    def claim(self, timeout: float) -> Claimed | None:
        """Blocks up to timeout for the next job id (FIFO), then marks it started."""
        queue = self.queue
        job_id_raw: object = self._prefetched
        self._prefetched = None
        if job_id_raw is None:
            job_id_raw = self.connection.blmove(
                queue.key,
                self.taken_key,
                timeout,  # type: ignore[arg-type]  # redis accepts fractional seconds
                "LEFT",
                "RIGHT",
            )
        if job_id_raw is None:
            return None
        job_id = job_id_raw.decode() if isinstance(job_id_raw, bytes) else str(job_id_raw)
        job = RqJob(id=job_id, connection=self.connection, serializer=JSONSerializer)
        job.origin = queue.name
        started_at = _now()
        # Plain pipelines, not MULTI/EXEC: only this worker writes a job it has claimed, and a
        # transaction doubles the replies to parse (a QUEUED per command).
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hgetall(job.key)
            job.prepare_for_execution(self.worker_name, pipeline=pipe)
            execution = Execution.create(job, STARTED_TTL, pipeline=pipe, worker_name=self.worker_name)
            pipe.lrem(self.taken_key, 1, job_id)
            replies = pipe.execute()
        return Claimed(job=job, execution=execution, raw=replies[0], started_at=started_at)

    def succeed(self, claimed: Claimed, result: dict[str, Any], channel: str, done_event: str) -> None:
        job = claimed.job
        job.ended_at = _now()
        with self.connection.pipeline(transaction=False) as pipe:
            job.set_status(JobStatus.FINISHED, pipeline=pipe)
            pipe.hset(job.key, "ended_at", utcformat(job.ended_at))
            Result.create(
                job,
                Result.Type.SUCCESSFUL,
                RESULT_TTL,
                return_value=result,
                worker_name=self.worker_name,
                pipeline=pipe,
                execution_id=claimed.execution.id,
                execution_started_at=claimed.started_at,
                execution_ended_at=job.ended_at,
            )
            self.finished.add(job, RESULT_TTL, pipe)
            self._end(claimed, pipe, RESULT_TTL)
            pipe.publish(channel, done_event)
            self._prefetch(pipe)

    def fail(self, claimed: Claimed, code: str, message: str, channel: str, error_event: str) -> None:
        job = claimed.job
        job.ended_at = _now()
        reason = encode_failure(code, message)
        with self.connection.pipeline(transaction=False) as pipe:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            pipe.hset(job.key, mapping={"ended_at": utcformat(job.ended_at), "exc_info": _compress(reason)})
            self.failed.add(job, ttl=FAILURE_TTL, exc_string=reason, pipeline=pipe)
            Result.create_failure(
                job,
                FAILURE_TTL,
                exc_string=reason,
                worker_name=self.worker_name,
                pipeline=pipe,
                execution_id=claimed.execution.id,
                execution_started_at=claimed.started_at,
                execution_ended_at=job.ended_at,
            )
            self._end(claimed, pipe, FAILURE_TTL)
            pipe.publish(channel, error_event)
            self._prefetch(pipe)

    def _prefetch(self, pipe: Any) -> None:
        pipe.lmove(self.queue.key, self.taken_key, "LEFT", "RIGHT")
        taken = pipe.execute()[-1]
        self._prefetched = taken.decode() if isinstance(taken, bytes) else taken

    def give_back(self) -> None:
        """Returns a prefetched job to the head of the queue (the worker is exiting)."""
        taken, self._prefetched = self._prefetched, None
        if taken is not None:
            with self.connection.pipeline() as pipe:
                pipe.lrem(self.taken_key, 1, taken)
                pipe.lpush(self.queue.key, taken)
                pipe.execute()

    def _end(self, claimed: Claimed, pipe: Any, ttl: int) -> None:
        claimed.execution.delete(claimed.job, pipeline=pipe)
        pipe.expire(claimed.job.key, ttl)


def _compress(text: str) -> bytes:
    return zlib.compress(text.encode("utf-8"))


def describe_payload(raw: dict[bytes, bytes]) -> str:
    """A short, safe description of a record that failed to parse, for an error message."""
    keys = sorted(k.decode(errors="replace") for k in raw)
    return json.dumps(keys)[:200]


def fail_orphans(
    connection: redis.Redis,
    keys: Keys,
    model: str,
    worker_prefix: str,
    *,
    reason: str = "",
    skip_live: bool = False,
) -> int:
    """Ends as failed every started job of dead workers (names starting with worker_prefix).

    Also puts back at the front of the queue, in order, the jobs they had taken but not
    yet started, so a crash loses nothing. With skip_live, a worker whose heartbeat is
    still alive is left alone. Returns the number of jobs failed.
    """
    queue = make_queue(connection, keys.queue_name(model))
    registry = StartedJobRegistry(queue=queue)
    failed = 0
    for job_id in registry.get_job_ids(cleanup=False):
        job = fetch_job(connection, job_id)
        if job is None or not (job.worker_name or "").startswith(worker_prefix):
            continue
        if job.get_status(refresh=False) != JobStatus.STARTED:
            continue
        if skip_live and connection.exists(keys.worker(job.worker_name or "")):
            continue
        message = f"worker {job.worker_name} died while running this job" + (f" ({reason})" if reason else "")
        code = ErrorCode.HOST_DIED if reason else ErrorCode.WORKER_DIED
        end_failed(connection, job, keys.channel(job_id), code, message, registry=registry)
        failed += 1
    # The workers rq registered on this queue, not a SCAN of the keyspace: this runs for every
    # model on every sweep. A worker that exits cleanly deregisters with nothing taken.
    for worker_key in sorted(get_keys(queue=queue)):
        name = worker_key.removeprefix(RqWorker.redis_worker_namespace_prefix)
        if not name.startswith(worker_prefix) or (skip_live and connection.exists(keys.worker(name))):
            continue
        # LMOVE from the tail to the head keeps the taken jobs in their queue order.
        while connection.lmove(keys.taken(model, name), queue.key, "RIGHT", "LEFT") is not None:
            pass
    # Drops registrations whose rq heartbeat key has expired, so the loop above stays short.
    clean_worker_registry(queue)
    return failed


def end_failed(
    connection: redis.Redis,
    job: RqJob,
    channel: str,
    code: str,
    message: str,
    *,
    registry: StartedJobRegistry | None = None,
) -> None:
    """Ends a job that no live worker holds as failed, and tells its client."""
    reason = encode_failure(code, message)
    with connection.pipeline() as pipe:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        pipe.hset(job.key, "ended_at", utcformat(_now()))
        if registry is not None:
            registry.remove_executions(job, pipeline=pipe)
        job.failed_job_registry.add(job, ttl=FAILURE_TTL, exc_string=reason, pipeline=pipe)
        Result.create_failure(job, FAILURE_TTL, exc_string=reason, pipeline=pipe)
        pipe.expire(job.key, FAILURE_TTL)
        # seq 0 reads as a gap to a client that saw tokens; it then reads the stored failure.
        pipe.publish(channel, ErrorEvent(seq=0, code=code, message=message).model_dump_json())
        pipe.execute()


def fail_queued(connection: redis.Redis, keys: Keys, model: str, code: str, message: str) -> int:
    """Takes every waiting job off a model's queue and ends it as failed (e.g. no capacity)."""
    queue = make_queue(connection, keys.queue_name(model))
    failed = 0
    while (raw := connection.lpop(queue.key)) is not None:
        job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        job = fetch_job(connection, job_id)
        if job is None:
            continue
        end_failed(connection, job, keys.channel(job_id), code, message)
        failed += 1
    return failed
