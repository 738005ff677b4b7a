"""The worker's side of rq's job records: claim a job, then end it, one round trip each.

rq's own worker spends several round trips of bookkeeping per job; hostler keeps rq's
record layout (queue list, intermediate queue, started/finished/failed registries,
results stream) so `rq info` and rq-dashboard stay truthful, but batches each step
into one pipeline. The taken list the take fills is `taken.py`'s; ending jobs this worker does
not hold (a dead worker's) is the control plane's (`control/endings.py`).
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import redis
from hostler.client._connection import durability_of
from hostler.client._rqstore import (
    FAILURE_TTL,
    RESULT_TTL,
    encode_failure,
    end_canceled,
    make_queue,
)
from hostler.schemas import PRIORITIES, Keys, as_text
from hostler.worker.outage import OutageGuard
from rq.executions import Execution
from rq.job import Job as RqJob
from rq.job import JobStatus
from rq.queue import Queue
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import current_timestamp, utcformat
from rq.worker import Worker as RqWorker

from .bell import BellListener
from .metrics import JobMetrics, PieceClock
from .taken import TAKE, requeue_taken

log = logging.getLogger("hostler.worker")

T = TypeVar("T")

# How long a started job stays in the started registry without a heartbeat.
STARTED_TTL = 60

# Runs a worker's writes to a job only while the job is still that worker's: started by it,
# or, for a claim (the taken list given as KEYS[2]), still in its taken list, whence it is
# removed. A janitor that judged the worker dead (frozen, cut off) may have failed the job,
# queued it again, or put it back unstarted; the worker's late writes must not undo that.
# Every write is guarded, so a call replayed after a lost reply changes nothing twice.
# KEYS: job hash[, taken list]. ARGV: started status, worker name, job id, then each
# command as its word count and its words. Returns nil if the job is not the worker's,
# else the replies of the commands.
_IF_HELD = """
local held = redis.call('HGET', KEYS[1], 'status') == ARGV[1]
  and redis.call('HGET', KEYS[1], 'worker_name') == ARGV[2]
if not held and KEYS[2] then
  held = redis.call('LREM', KEYS[2], 1, ARGV[3]) == 1
end
if not held then return false end
local replies = {}
local i = 4
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  replies[#replies + 1] = redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return replies
"""


# The end event of a job, sent after WAIT, and only if the end it announces is the one that
# applied (the job has that status and this worker's name), as the guarded end would have.
# KEYS: job hash. ARGV: ended status, worker name, channel, event.
_ANNOUNCE = """
if redis.call('HGET', KEYS[1], 'status') == ARGV[1] and redis.call('HGET', KEYS[1], 'worker_name') == ARGV[2] then
  return redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return false
"""


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class _Announce:
    """A job's end event, and the status the end it announces leaves the job in."""

    status: str
    channel: str
    event: str


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
    # Set (by the heartbeat) once the job is found ended or queued again by someone else:
    # this worker was judged dead, and whatever it still does with the job is dropped.
    lost: bool = False
    # Set as its end is written: a heartbeat refused from then on may only mean that end applied.
    ending: bool = False


@dataclass
class _Claiming:
    """A claim sent but not yet answered: its exact words, to send again if the reply is lost."""

    index: int
    job: RqJob
    execution: Execution
    started_at: datetime
    args: list[Any]


class JobStore:
    def __init__(self, connection: redis.Redis, keys: Keys, model: str, rq_worker: RqWorker, taken_key: str) -> None:
        self.connection = connection
        self.keys = keys
        self.model = model
        # One rq queue per priority class, in the order they are served.
        self.queues = [make_queue(connection, keys.queue_name(model, p)) for p in PRIORITIES]
        # Per worker, not rq's shared intermediate list: replicas on several hosts share a
        # queue, and only a dead worker's own taken ids may go back on it.
        self.taken_key = taken_key
        self.bell = keys.bell(model)
        self._rings = BellListener(connection, self.bell)
        self.rq_worker = rq_worker
        # rq builds a new registry object (and re-resolves its serializer) on every access.
        self._registries = {q.name: (q.finished_job_registry, q.failed_job_registry) for q in self.queues}
        self._take = connection.register_script(TAKE)
        self._take_keys = [*(q.key for q in self.queues), taken_key, self.bell]
        self._take_args = [RqJob.redis_job_namespace_prefix, *(q.name for q in self.queues)]
        self._if_held = connection.register_script(_IF_HELD)
        self._announce = connection.register_script(_ANNOUNCE)
        # What the URL asks of an end before its client hears of it (see _end_held).
        self.durability = durability_of(connection)
        # Tells a missing waiting key from one that lapsed while another server took over.
        self._outage = OutageGuard()
        self._outage_checked = False
        # The job taken with the previous job's end, so a busy worker skips one round trip.
        self._prefetched: tuple[int, str] | None = None
        self._claiming: _Claiming | None = None
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
        try:
            # After a look that found nothing (and cleared the bell), any new job rings the bell:
            # an idle worker goes straight to waiting for it.
            taken = None if self._empty else self._decode(self._take(keys=self._take_keys, args=self._take_args))
            if taken is None and timeout > 0:
                # A worker that was busy before is still subscribed: the rings published while
                # it idles were pushed onto the list too, which is what wakes it.
                self._rings.drain()
                # rq's own enqueue does not ring: a job pushed that way waits at most `timeout`.
                self.connection.blpop([self.bell], timeout=timeout)
                taken = self._decode(self._take(keys=self._take_keys, args=self._take_args))
            elif taken is None and self._empty and self._rings.rang():
                # A busy worker looks without waiting (its other jobs are generating), and only
                # after a ring since its last empty look (bell.py).
                taken = self._decode(self._take(keys=self._take_keys, args=self._take_args))
        except redis.RedisError:
            # The take may have run with its reply lost: the next one answers what it took.
            self._empty = False
            raise
        self._empty = taken is None
        return taken

    @staticmethod
    def _decode(reply: Any) -> tuple[int, str] | None:
        if not reply:
            return None
        index, raw = reply
        return int(index) - 1, as_text(raw)

    def claim(self, timeout: float) -> Claimed | None:
        """Waits up to timeout for the next job (interactive first, FIFO in a class) and marks it started.

        timeout 0 looks once and never blocks: a worker with generations in flight looks between steps.

        A claim that raised (its reply lost in an outage) is sent again, word for word, by the
        next call, so the job it may already have started is not left started under a live
        worker that forgot it.
        """
        if not self._outage_checked:
            # The server this worker started with, to tell a failover by later.
            self._outage.recovered(self.connection)
            self._outage_checked = True
        if self._claiming is None:
            taken, self._prefetched = self._prefetched, None
            if taken is None:
                taken = self._taken(timeout)
            if taken is None:
                return None
            self._claiming = self._prepare_claim(*taken)
        claiming = self._claiming
        replies = self._if_held(keys=[claiming.job.key, self.taken_key], args=claiming.args)
        self._claiming = None
        if replies is None:
            # Put back by a janitor that judged this worker dead between its take and now.
            log.warning("job %s was put back on its queue before %s started it", claiming.job.id, self.worker_name)
            self._empty = False
            return None
        raw, waited_for, in_time = replies[:3]
        if not waited_for and not self._outage.recovered(self.connection):
            # Its waiting key may have lapsed while Redis failed over, its client still there.
            log.info("job %s has no waiting key just after a failover or an outage; running it", claiming.job.id)
            waited_for = True
        return Claimed(
            job=claiming.job,
            execution=claiming.execution,
            raw=dict(zip(raw[::2], raw[1::2], strict=True)),
            started_at=claiming.started_at,
            queue=self.queues[claiming.index],
            waited_for=bool(waited_for),
            in_time=bool(in_time),
        )

    def _prepare_claim(self, index: int, job_id: str) -> _Claiming:
        job = RqJob(id=job_id, connection=self.connection, serializer=JSONSerializer)
        job.origin = self.queues[index].name
        started_at = _now()
        keys = self.keys

        def build(pipe: Any) -> Execution:
            pipe.hgetall(job.key)
            pipe.exists(keys.waiting(job_id))
            # Left to expire on its own: a claim sent again must read what the first read.
            pipe.exists(keys.start_by(job_id))
            job.prepare_for_execution(self.worker_name, pipeline=pipe)
            execution = Execution.create(job, STARTED_TTL, pipeline=pipe, worker_name=self.worker_name)
            pipe.hdel(keys.leases, job_id)
            return execution

        execution, commands = self._commands(build)
        return _Claiming(index, job, execution, started_at, self._guarded(job_id, commands))

    def _commands(self, build: Callable[[Any], T]) -> tuple[T, list[Any]]:
        """What `build` (rq's own writers among it) queues on a pipeline, as words to guard."""
        pipe = self.connection.pipeline(transaction=False)
        try:
            built = build(pipe)
            words: list[Any] = []
            for args, _options in pipe.command_stack:
                words += [len(args), *args]
            return built, words
        finally:
            pipe.reset()

    def _guarded(self, job_id: str, commands: list[Any]) -> list[Any]:
        return [JobStatus.STARTED.value, self.worker_name, job_id, *commands]

    def holds(self, claimed: Claimed, pipe: Any) -> None:
        """Queues the running job's heartbeat, written only while the job is still this worker's.

        Its reply on the pipeline is None once the job was taken from this worker.
        """
        _, commands = self._commands(
            lambda scratch: claimed.execution.heartbeat(claimed.job.started_job_registry, STARTED_TTL, scratch)
        )
        self._if_held(keys=[claimed.job.key], args=self._guarded(claimed.job.id, commands), client=pipe)

    def succeed(self, claimed: Claimed, result: dict[str, Any], channel: str, done_event: str) -> bool:
        """Stores a result and sends the done event; False if the job was no longer this worker's."""
        job = claimed.job
        job.ended_at = ended_at = _now()

        def build(pipe: Any) -> None:
            job.set_status(JobStatus.FINISHED, pipeline=pipe)
            pipe.hset(job.key, "ended_at", utcformat(ended_at))
            Result.create(
                job,
                Result.Type.SUCCESSFUL,
                RESULT_TTL,
                return_value=result,
                worker_name=self.worker_name,
                pipeline=pipe,
                execution_id=claimed.execution.id,
                execution_started_at=claimed.started_at,
                execution_ended_at=ended_at,
            )
            self._registries[claimed.queue.name][0].add(job, RESULT_TTL, pipe)
            self._end(claimed, pipe, RESULT_TTL)
            self.metrics.finished(pipe, result, claimed.kind, claimed.clock)

        return self._end_held(claimed, build, _Announce(JobStatus.FINISHED.value, channel, done_event))

    def fail(self, claimed: Claimed, code: str, message: str, channel: str, error_event: str) -> bool:
        job = claimed.job
        job.ended_at = ended_at = _now()
        reason = encode_failure(code, message)

        def build(pipe: Any) -> None:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            pipe.hset(job.key, mapping={"ended_at": utcformat(ended_at), "exc_info": _compress(reason)})
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
                execution_ended_at=ended_at,
            )
            self._end(claimed, pipe, FAILURE_TTL)
            self.metrics.ended(pipe, "failed", kind=claimed.kind, code=code, ran_s=claimed.clock.ran_s())

        return self._end_held(claimed, build, _Announce(JobStatus.FAILED.value, channel, error_event))

    def cancel(self, claimed: Claimed, code: str, message: str, channel: str) -> bool:
        """Ends a claimed job that must not run (its client left, its start deadline passed)."""

        def build(pipe: Any) -> None:
            end_canceled(claimed.job, pipe, self.keys, code, message)
            claimed.execution.delete(claimed.job, pipeline=pipe)
            self.metrics.ended(pipe, "canceled", kind=claimed.kind, code=code)

        return self._end_held(claimed, build)

    def _end_held(self, claimed: Claimed, build: Callable[[Any], None], announce: _Announce | None = None) -> bool:
        """One round trip: the job's end, guarded, and the take of the next job id.

        With a durability to wait for, the end event goes out after WAIT (in the same round
        trip), so a client never hears of an end that a failover could still undo.
        """
        announced = self.metrics.announced
        waits = announce is not None and self.durability.waits

        def build_all(pipe: Any) -> None:
            build(pipe)
            if announce is not None and not waits:
                pipe.publish(announce.channel, announce.event)

        _, commands = self._commands(build_all)
        args = self._guarded(claimed.job.id, commands)
        try:
            ended, taken, *after = self._end_round_trip(claimed, args, announce if waits else None)
        except redis.RedisError:
            # Maybe not applied: the next try queues the once-per-process writes again.
            self.metrics.announced = announced
            raise
        self._prefetched = self._decode(taken)
        self._empty = self._prefetched is None
        if after and ended is not None and int(after[0]) < self.durability.replicas:
            log.warning(
                "the end of job %s reached %s of %d replica(s) within %d ms; a failover now could lose it",
                claimed.job.id,
                after[0],
                self.durability.replicas,
                self.durability.timeout_ms,
            )
        if ended is None:
            self.metrics.announced = announced
            return False
        return True

    def _end_round_trip(self, claimed: Claimed, args: list[Any], announce: _Announce | None) -> list[Any]:
        try:
            return self._send_end(claimed, args, announce)
        except redis.exceptions.NoScriptError:
            # redis-py loads a pipeline's scripts once, then replays the pipeline after a
            # reconnect; a Redis that restarted (or a replica promoted) in between has none.
            # No call changes anything twice, so the whole round trip is sent again (its
            # scripts loaded first).
            return self._send_end(claimed, args, announce)

    def _send_end(self, claimed: Claimed, args: list[Any], announce: _Announce | None) -> list[Any]:
        with self.connection.pipeline(transaction=False) as pipe:
            self._if_held(keys=[claimed.job.key], args=args, client=pipe)
            self._take(keys=self._take_keys, args=self._take_args, client=pipe)
            if announce is not None:
                pipe.execute_command("WAIT", self.durability.replicas, self.durability.timeout_ms)
                event_args = [announce.status, self.worker_name, announce.channel, announce.event]
                self._announce(keys=[claimed.job.key], args=event_args, client=pipe)
            return list(pipe.execute())

    def give_back(self) -> None:
        """Returns a taken but unstarted job to the head of its queue (the worker is exiting)."""
        self._prefetched = None
        self._rings.close()
        requeue_taken(self.connection, self.keys, self.model, self.worker_name)

    def _end(self, claimed: Claimed, pipe: Any, ttl: int) -> None:
        claimed.execution.delete(claimed.job, pipeline=pipe)
        pipe.expire(claimed.job.key, ttl)


def _compress(text: str) -> bytes:
    return zlib.compress(text.encode("utf-8"))


def describe_payload(raw: dict[bytes, bytes]) -> str:
    """A short, safe description of a record that failed to parse, for an error message."""
    keys = sorted(k.decode(errors="replace") for k in raw)
    return json.dumps(keys)[:200]
