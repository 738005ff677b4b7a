"""The worker's side of rq's job records: claim a job, then end it, one round trip each.

rq's own worker spends several round trips of bookkeeping per job; hostler keeps rq's
record layout (queue list, intermediate queue, started/finished/failed registries,
results stream) so `rq info` and rq-dashboard stay truthful, but batches each step
into one pipeline.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis
from hostler.client._rqstore import (
    FAILURE_TTL,
    RESULT_TTL,
    encode_failure,
    end_canceled,
    fetch_job,
    make_queue,
    queue_keys,
)
from hostler.schemas import PRIORITIES, ErrorCode, ErrorEvent, Keys
from rq.executions import Execution
from rq.job import Job as RqJob
from rq.job import JobStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import current_timestamp, utcformat
from rq.worker import Worker as RqWorker
from rq.worker_registration import clean_worker_registry, get_keys

from .metrics import JobMetrics, PieceClock, count_ended

log = logging.getLogger("hostler.worker")

# How long a started job stays in the started registry without a heartbeat.
STARTED_TTL = 60

# Takes the next job id, interactive before batch, into the worker's taken list. With
# nothing waiting it clears the bell, so that the next enqueue's ring wakes an idle worker;
# a ring left from jobs another worker already took would only cost an empty look.
# KEYS: queues in priority order..., taken list, bell. Returns {index of the queue, id} or nil.
_TAKE = """
local n = #KEYS - 2
for i = 1, n do
  local id = redis.call('LMOVE', KEYS[i], KEYS[n + 1], 'LEFT', 'RIGHT')
  if id then return {i, id} end
end
redis.call('DEL', KEYS[n + 2])
return nil
"""

# A dead worker's taken ids back to the front of the queue each came from, newest first so
# that the oldest ends up at the head. One script, so two janitors cannot both push an id.
# KEYS: taken list, bell. ARGV: rq job key prefix, rq queue key prefix, default queue name.
_REQUEUE = """
local n = 0
while true do
  local id = redis.call('RPOP', KEYS[1])
  if not id then break end
  local origin = redis.call('HGET', ARGV[1] .. id, 'origin')
  redis.call('LPUSH', ARGV[2] .. (origin or ARGV[3]), id)
  n = n + 1
end
if n > 0 then redis.call('RPUSH', KEYS[2], '1') end
return n
"""

# Moves a job from one status to another only if it still has the first, so that two
# processes that both think a job is theirs to end (a janitor and a controller, say)
# end it once.
_TRANSITION = """
if redis.call('HGET', KEYS[1], 'status') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'status', ARGV[2])
  return 1
end
return 0
"""


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Claimed:
    """A job taken off the queue and marked started; `raw` is its unparsed record.

    `waited_for` and `in_time` say whether its waiting key and start deadline key still
    existed when it was taken (they matter only if the job says it has them).
    """

    job: RqJob
    execution: Execution
    raw: dict[bytes, bytes]
    started_at: datetime
    queue: Queue
    waited_for: bool = True
    in_time: bool = True
    # For the metrics: the job's kind once parsed, and when it started and made its first piece.
    kind: str = "invalid"
    clock: PieceClock = field(default_factory=PieceClock)


class JobStore:
    def __init__(self, connection: redis.Redis, keys: Keys, model: str, rq_worker: RqWorker, taken_key: str) -> None:
        self.connection = connection
        self.keys = keys
        # One rq queue per priority class, in the order they are served.
        self.queues = [make_queue(connection, keys.queue_name(model, p)) for p in PRIORITIES]
        # Per worker, not rq's shared intermediate list: replicas on several hosts share a
        # queue, and only a dead worker's own taken ids may go back on it.
        self.taken_key = taken_key
        self.bell = keys.bell(model)
        self.rq_worker = rq_worker
        # rq builds a new registry object (and re-resolves its serializer) on every access.
        self._registries = {q.name: (q.finished_job_registry, q.failed_job_registry) for q in self.queues}
        self._take = connection.register_script(_TAKE)
        self._take_keys = [*(q.key for q in self.queues), taken_key, self.bell]
        # The job taken with the previous job's end, so a busy worker skips one round trip.
        self._prefetched: tuple[int, str] | None = None
        self._empty = False
        self.metrics = JobMetrics(keys, model)

    @property
    def worker_name(self) -> str:
        return str(self.rq_worker.name)

    def waiting(self) -> int:
        with self.connection.pipeline(transaction=False) as pipe:
            for queue in self.queues:
                pipe.llen(queue.key)
            return sum(int(n) for n in pipe.execute())

    def _taken(self, timeout: float) -> tuple[int, str] | None:
        # After a look that found nothing (and cleared the bell), any new job rings the bell:
        # an idle worker goes straight to waiting for it.
        taken = None if self._empty else self._decode(self._take(keys=self._take_keys))
        if taken is None:
            # rq's own enqueue does not ring: a job pushed that way waits at most `timeout`.
            self.connection.blpop([self.bell], timeout=timeout)
            taken = self._decode(self._take(keys=self._take_keys))
        self._empty = taken is None
        return taken

    @staticmethod
    def _decode(reply: Any) -> tuple[int, str] | None:
        if not reply:
            return None
        index, raw = reply
        return int(index) - 1, raw.decode() if isinstance(raw, bytes) else str(raw)

    def claim(self, timeout: float) -> Claimed | None:
        """Waits up to timeout for the next job (interactive first, FIFO in a class) and marks it started."""
        taken, self._prefetched = self._prefetched, None
        if taken is None:
            taken = self._taken(timeout)
        if taken is None:
            return None
        index, job_id = taken
        queue = self.queues[index]
        job = RqJob(id=job_id, connection=self.connection, serializer=JSONSerializer)
        job.origin = queue.name
        started_at = _now()
        keys = self.keys
        # Plain pipelines, not MULTI/EXEC: only this worker writes a job it has claimed, and a
        # transaction doubles the replies to parse (a QUEUED per command).
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hgetall(job.key)
            pipe.exists(keys.waiting(job_id))
            pipe.exists(keys.start_by(job_id))
            # Read above, then dropped: once started, the deadline has done its work.
            pipe.delete(keys.start_by(job_id))
            job.prepare_for_execution(self.worker_name, pipeline=pipe)
            execution = Execution.create(job, STARTED_TTL, pipeline=pipe, worker_name=self.worker_name)
            pipe.lrem(self.taken_key, 1, job_id)
            pipe.hdel(keys.leases, job_id)
            replies = pipe.execute()
        return Claimed(
            job=job,
            execution=execution,
            raw=replies[0],
            started_at=started_at,
            queue=queue,
            waited_for=bool(replies[1]),
            in_time=bool(replies[2]),
        )

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
            self._registries[claimed.queue.name][0].add(job, RESULT_TTL, pipe)
            self._end(claimed, pipe, RESULT_TTL)
            self.metrics.finished(pipe, result, claimed.kind, claimed.clock)
            pipe.publish(channel, done_event)
            self._prefetch(pipe)

    def fail(self, claimed: Claimed, code: str, message: str, channel: str, error_event: str) -> None:
        job = claimed.job
        job.ended_at = _now()
        reason = encode_failure(code, message)
        with self.connection.pipeline(transaction=False) as pipe:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            pipe.hset(job.key, mapping={"ended_at": utcformat(job.ended_at), "exc_info": _compress(reason)})
            # rq's FailedJobRegistry.add would re-save the whole record, which a payload that
            # was refused unread (too large, not JSON) cannot be rebuilt into.
            pipe.zadd(self._registries[claimed.queue.name][1].key, {job.id: current_timestamp() + FAILURE_TTL})
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
            self.metrics.ended(pipe, "failed", kind=claimed.kind, code=code, ran_s=claimed.clock.ran_s())
            pipe.publish(channel, error_event)
            self._prefetch(pipe)

    def cancel(self, claimed: Claimed, code: str, message: str, channel: str) -> None:
        """Ends a claimed job that must not run (its client left, its start deadline passed)."""
        with self.connection.pipeline(transaction=False) as pipe:
            end_canceled(claimed.job, pipe, self.keys, code, message)
            claimed.execution.delete(claimed.job, pipeline=pipe)
            self.metrics.ended(pipe, "canceled", kind=claimed.kind, code=code)
            self._prefetch(pipe)

    def _prefetch(self, pipe: Any) -> None:
        self._take(keys=self._take_keys, client=pipe)
        try:
            self._prefetched = self._decode(pipe.execute()[-1])
        except redis.exceptions.NoScriptError as exc:
            # redis-py loads a pipeline's scripts once, then replays the pipeline after a
            # reconnect; a Redis that restarted in between has none. Every command before the
            # take was applied (the job has ended); the next claim takes the next job.
            log.warning("ended a job but could not take the next one: %s", exc)
            self._prefetched = None
            self._empty = False
            return
        self._empty = self._prefetched is None

    def give_back(self) -> None:
        """Returns a prefetched job to the head of its queue (the worker is exiting)."""
        taken, self._prefetched = self._prefetched, None
        if taken is not None:
            index, job_id = taken
            with self.connection.pipeline() as pipe:
                pipe.lrem(self.taken_key, 1, job_id)
                pipe.lpush(self.queues[index].key, job_id)
                pipe.rpush(self.bell, "1")
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
    """Ends every started job of dead workers (names starting with worker_prefix).

    A job with retries left (rq's Retry) goes back to the front of its queue instead of
    failing. Jobs the dead workers had taken but not started go back too, in order, so a
    crash loses nothing. With skip_live, a worker whose heartbeat is still alive is left
    alone. Returns the number of jobs failed or retried.
    """
    ended = 0
    for queue in [make_queue(connection, keys.queue_name(model, p)) for p in PRIORITIES]:
        registry = StartedJobRegistry(queue=queue)
        for job_id in registry.get_job_ids(cleanup=False):
            job = fetch_job(connection, job_id)
            if job is None or not (job.worker_name or "").startswith(worker_prefix):
                continue
            if job.get_status(refresh=False) != JobStatus.STARTED:
                continue
            if skip_live and connection.exists(keys.worker(job.worker_name or "")):
                continue
            message = f"worker {job.worker_name} died while running this job" + (f" ({reason})" if reason else "")
            code = ErrorCode.HOST_DIED if reason.startswith("host") else ErrorCode.WORKER_DIED
            if job.should_retry:
                ended += retry_job(connection, keys, job, queue, registry, message)
            elif end_failed(connection, job, keys.channel(job_id), code, message, registry=registry):
                ended += 1
                count_ended(connection, keys, model, "failed", code)
        # The workers rq registered on this queue, not a SCAN of the keyspace: this runs for every
        # model on every sweep. A worker that exits cleanly deregisters with nothing taken.
        for worker_key in sorted(get_keys(queue=queue)):
            name = worker_key.removeprefix(RqWorker.redis_worker_namespace_prefix)
            if not name.startswith(worker_prefix) or (skip_live and connection.exists(keys.worker(name))):
                continue
            requeue_taken(connection, keys, model, name)
        # Drops registrations whose rq heartbeat key has expired, so the loop above stays short.
        clean_worker_registry(queue)
    return ended


def requeue_taken(connection: redis.Redis, keys: Keys, model: str, worker_name: str) -> int:
    """Puts a dead worker's taken-but-not-started jobs back at the front of their queues, in order."""
    return int(
        connection.eval(
            _REQUEUE,
            2,
            keys.taken(model, worker_name),
            keys.bell(model),
            RqJob.redis_job_namespace_prefix,
            Queue.redis_queue_namespace_prefix,
            keys.queue_name(model),
        )
    )


def _transition(connection: redis.Redis, job_key: str, before: str, after: str) -> bool:
    return bool(connection.eval(_TRANSITION, 1, job_key, before, after))


def retry_job(
    connection: redis.Redis, keys: Keys, job: RqJob, queue: Queue, registry: StartedJobRegistry, message: str
) -> int:
    """Queues a job whose worker died again, at the front, using one of its rq retries."""
    if not _transition(connection, job.key, JobStatus.STARTED, JobStatus.QUEUED):
        return 0
    model = keys.model_of_queue(queue.name) or ""
    job.enqueue_at_front_on_retry = True
    with connection.pipeline() as pipe:
        registry.remove_executions(job, pipeline=pipe)
        job.retry(queue, pipe)
        pipe.rpush(keys.bell(model), "1")
        pipe.execute()
    log.warning("job %s retried (%s retries left): %s", job.id, job.retries_left, message)
    return 1


def end_failed(
    connection: redis.Redis,
    job: RqJob,
    channel: str,
    code: str,
    message: str,
    *,
    registry: StartedJobRegistry | None = None,
    expected: str = JobStatus.STARTED,
) -> int:
    """Ends a job that no live worker holds as failed, and tells its client; 1 if this call ended it."""
    if not _transition(connection, job.key, expected, JobStatus.FAILED):
        return 0
    reason = encode_failure(code, message)
    with connection.pipeline() as pipe:
        # rq's failed registry saves the whole record: its in-memory status must be the new one.
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
    return 1


def fail_queued(connection: redis.Redis, keys: Keys, model: str, code: str, message: str) -> int:
    """Takes every waiting job off a model's queues and ends it as failed (e.g. no capacity)."""
    failed = 0
    for key in queue_keys(keys, model):
        while (raw := connection.lpop(key)) is not None:
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            job = fetch_job(connection, job_id)
            if job is None:
                continue
            failed += end_failed(connection, job, keys.channel(job_id), code, message, expected=JobStatus.QUEUED)
    count_ended(connection, keys, model, "failed", code, failed)
    return failed
