"""Ending a job that someone else may end too: the jobs of dead workers and hosts, and queued
jobs no host can take.

The janitor (workers whose heartbeat expired), the controller (hosts whose report expired,
models nothing has room for) and the host agent (a child that exited) all end jobs they do
not hold; so may two janitors at once, or a worker that was only frozen. Each end here is a
compare-and-set of the job's status (`_TRANSITION`), so a job ends once, and the worker's own
guarded end (serving.jobstore) finds it ended. A dead worker's taken-but-unstarted ids go back
on their queue through `serving.taken.requeue_taken`, which a worker also uses to give back
what it took when it exits.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import redis
from hostler.client._rqstore import FAILURE_TTL, encode_failure, fetch_job, make_queue, queue_keys
from hostler.schemas import PRIORITIES, ErrorCode, ErrorEvent, Keys, as_text
from hostler.worker.serving.metrics import count_ended
from hostler.worker.serving.taken import requeue_taken
from rq.job import Job as RqJob
from rq.job import JobStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.utils import utcformat
from rq.worker import Worker as RqWorker
from rq.worker_registration import clean_worker_registry, get_keys

__all__ = ["end_failed", "fail_orphans", "fail_queued", "retry_job"]

log = logging.getLogger("hostler.endings")

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
        pipe.publish(keys.bell(model), "1")
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
        pipe.hset(job.key, "ended_at", utcformat(datetime.now(timezone.utc)))
        if registry is not None:
            registry.remove_executions(job, pipeline=pipe)
        job.failed_job_registry.add(job, ttl=FAILURE_TTL, exc_string=reason, pipeline=pipe)
        Result.create_failure(job, FAILURE_TTL, exc_string=reason, pipeline=pipe)
        pipe.expire(job.key, FAILURE_TTL)
        # seq 0 reads as a gap to a client that saw tokens; it then reads the stored failure.
        pipe.publish(channel, ErrorEvent(seq=0, code=code, message=message).model_dump_json())
        pipe.execute()
    return 1


# Takes every id off a model's queues and drops its spec, only while the spec is still the one
# the caller decided with ('' for none). A load with other params writes its spec first, then its
# job: so a spec changed since means the newest jobs ask for something else, and failing them with
# the old decision's reason would refuse a load that may fit. KEYS: spec, queues... ARGV: the spec
# as read. Returns the ids taken, or nil (false) when the spec changed.
_TAKE_REFUSED = """
local spec = redis.call('GET', KEYS[1]) or ''
if spec ~= ARGV[1] then return false end
local ids = {}
for i = 2, #KEYS do
  for _, id in ipairs(redis.call('LRANGE', KEYS[i], 0, -1)) do ids[#ids + 1] = id end
  redis.call('DEL', KEYS[i])
end
if spec ~= '' then redis.call('DEL', KEYS[1]) end
return ids
"""


def fail_queued(
    connection: redis.Redis, keys: Keys, model: str, code: str, message: str, *, spec_read: bytes | None = None
) -> int | None:
    """Takes every waiting job off a model's queues and ends it as failed (e.g. no capacity), and
    drops the model's spec: the load that asked for it failed.

    `spec_read` is the spec the decision was made with (None: there was none). If the spec is
    another one now, nothing is failed and None is returned: the caller decides again.
    """
    script = connection.register_script(_TAKE_REFUSED)
    taken = script(keys=[keys.spec(model), *queue_keys(keys, model)], args=[spec_read or b""])
    if taken is None:
        return None
    failed = 0
    for raw in taken:
        job_id = as_text(raw)
        job = fetch_job(connection, job_id)
        if job is None:
            continue
        failed += end_failed(connection, job, keys.channel(job_id), code, message, expected=JobStatus.QUEUED)
    count_ended(connection, keys, model, "failed", code, failed)
    return failed
