"""Reading and writing hostler jobs in rq's own records, always with rq's JSON serializer.

Shared by the client and the worker so that both agree on what a job record holds.
Nothing here ever uses pickle: rq's default serializer is never passed in.
"""

from __future__ import annotations

from typing import Any

import redis
from hostler.schemas import ErrorEvent, Keys
from rq.job import Job as RqJob
from rq.job import JobStatus
from rq.queue import Queue
from rq.registry import CanceledJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from ._errors import ConnectionFailed
from ._outcome import JobOutcome, decode_failure, encode_failure, queue_key, queue_keys
from ._reads import job_outcome, run_sync

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "ENQUEUE_SCRIPT",
    "FAILURE_TTL",
    "QUEUED_TTL",
    "RESULT_TTL",
    "JobOutcome",
    "cancel_queued",
    "decode_failure",
    "encode_failure",
    "end_canceled",
    "fetch_job",
    "make_queue",
    "queue_key",
    "queue_keys",
    "read_outcome",
    "waiting_jobs",
]

# A finished job's record and result stay this long for a late reader (seconds).
RESULT_TTL = 3600
FAILURE_TTL = 24 * 3600
# A queued job nobody took expires after this; start deadlines and waiting keys end it sooner.
QUEUED_TTL = 24 * 3600
# Waiting jobs a model's queues (both classes together) take unless the operator set otherwise.
DEFAULT_MAX_QUEUE = 1000

# The bound check and every write of an enqueue in one step, so that a full queue refuses
# a job before anything of it is written, and concurrent clients cannot overshoot the bound.
# KEYS: interactive queue, batch queue, job hash, rq's queue set, target queue, bell, alive,
#       leases, waiting key, start-by key, max-queue hash
# ARGV: model, default bound, job ttl, job id, lease JSON or '', waiting ms, start ms, hash fields...
# Reply: {accepted (0 refused, 1 queued, 2 a job with this id exists: nothing written), length, bound, alive}.
ENQUEUE_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {2, 0, 0, 1}
end
local bound = tonumber(redis.call('HGET', KEYS[11], ARGV[1]) or redis.call('HGET', KEYS[11], '*') or ARGV[2])
local waiting = redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[2])
if bound > 0 and waiting >= bound then
  return {0, waiting, bound, 1}
end
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[3], unpack(fields))
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
redis.call('SADD', KEYS[4], KEYS[5])
redis.call('RPUSH', KEYS[5], ARGV[4])
redis.call('RPUSH', KEYS[6], '1')
redis.call('EXPIRE', KEYS[6], 60)
redis.call('PUBLISH', KEYS[6], '1')
if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[9], '1', 'PX', ARGV[6]) end
if tonumber(ARGV[7]) > 0 then redis.call('SET', KEYS[10], '1', 'PX', ARGV[7]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[8], ARGV[4], ARGV[5]) end
return {1, waiting + 1, bound, redis.call('EXISTS', KEYS[7])}
"""


def make_queue(connection: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer, default_timeout=-1)


def waiting_jobs(connection: redis.Redis, keys: Keys, model: str) -> int:
    with connection.pipeline(transaction=False) as pipe:
        for key in queue_keys(keys, model):
            pipe.llen(key)
        return sum(int(n) for n in pipe.execute())


def fetch_job(connection: redis.Redis, job_id: str) -> RqJob | None:
    try:
        return RqJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except ConnectionFailed:
        raise
    except Exception:  # noqa: BLE001 - a missing or unreadable record is the same to a reader
        return None


def read_outcome(connection: redis.Redis, job_id: str) -> JobOutcome | None:
    """The stored end of a job, or None while it is still queued or running."""
    return run_sync(connection, job_outcome(job_id))


def end_canceled(job: RqJob, pipe: Any, keys: Keys, code: str, message: str, seq: int = 0) -> None:
    """Queues the writes that end a job as canceled with a reason, on a pipeline."""
    reason = encode_failure(code, message)
    job.set_status(JobStatus.CANCELED, pipeline=pipe)
    pipe.hset(job.key, "ended_at", utcformat(now()))
    CanceledJobRegistry(job.origin, connection=job.connection, serializer=JSONSerializer).add(
        job, ttl=FAILURE_TTL, pipeline=pipe
    )
    Result.create_failure(job, FAILURE_TTL, exc_string=reason, pipeline=pipe)
    pipe.expire(job.key, FAILURE_TTL)
    pipe.hdel(keys.leases, job.id)
    pipe.delete(keys.waiting(job.id), keys.start_by(job.id))
    pipe.publish(keys.channel(job.id), ErrorEvent(seq=seq, code=code, message=message).model_dump_json())


def cancel_queued(connection: redis.Redis, keys: Keys, job_id: str, queue: str, code: str, message: str) -> bool:
    """Takes a job that is still waiting off its queue and ends it as canceled.

    False when it is no longer waiting (a worker took it): whoever took it ends it. The LREM
    decides, so a job is never both canceled here and run by a worker.
    """
    if not connection.lrem(queue, 1, job_id):
        return False
    job = fetch_job(connection, job_id)
    with connection.pipeline(transaction=False) as pipe:
        if job is None:
            pipe.hdel(keys.leases, job_id)
            pipe.delete(keys.waiting(job_id), keys.start_by(job_id))
        else:
            end_canceled(job, pipe, keys, code, message)
        pipe.execute()
    return True
