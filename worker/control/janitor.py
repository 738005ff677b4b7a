"""The janitor: ends the jobs nobody will run or read, so that no job waits or runs forever.

- A queued job whose client stopped waiting (its waiting key lapsed) or whose start
  deadline passed is taken off its queue and canceled before any worker spends time on it.
- A started job whose worker stopped heartbeating is failed with a reason (its client gets
  an error event), or queued again if it has rq retries left.
- `clean_up` cancels a model's jobs that have waited longer than an operator allows.

Running generations nobody listens to are the worker's own business: it sees PUBLISH reach
no one and stops. Every step here is safe with several janitors at once: a queued job is
ended by whoever removes it from its list, a started one by whoever moves its status.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import redis
from hostler.client._rqstore import cancel_queued, make_queue, queue_keys
from hostler.schemas import PRIORITIES, ErrorCode, Keys, Lease, as_text
from hostler.worker.outage import REDIS_OUTAGE, OutageBackoff, OutageGuard
from hostler.worker.serving.metrics import count_ended
from pydantic import ValidationError
from rq.job import Job as RqJob
from rq.queue import Queue

from .endings import fail_orphans

log = logging.getLogger("hostler.janitor")

LEASE_EVERY_S = 0.5
SWEEP_EVERY_S = 3.0
# rq's own worker trims its registries of ended jobs; hostler's worker is not rq's, so the
# janitor does it, or those sets would outgrow the records they point to.
TRIM_EVERY_S = 60.0


@dataclass
class Janitor:
    connection: redis.Redis
    keys: Keys
    max_queue: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _last_sweep: float = 0.0
    _last_trim: float = 0.0
    _outage: OutageGuard = field(default_factory=OutageGuard)

    def run(self) -> None:
        backoff = OutageBackoff(log, self._stop.wait)
        configured = False
        while not self._stop.is_set():
            try:
                if not configured:
                    self.configure()
                    configured = True
                self.step()
                backoff.succeeded()
                self._stop.wait(LEASE_EVERY_S)
            except REDIS_OUTAGE as exc:
                self._outage.lost_redis()
                backoff.failed(exc)

    def stop(self) -> None:
        self._stop.set()

    def configure(self) -> None:
        """Writes the operator's queue bound, the one every client's enqueue checks."""
        if self.max_queue is not None:
            self.connection.hset(self.keys.max_queue, "*", self.max_queue)

    def step(self) -> None:
        started = time.perf_counter()
        # Waiting keys that lapsed during an outage or a failover say nothing about their clients.
        if self._outage.recovered(self.connection):
            self.expire_leases()
        # scripts/simulate_hosts.py reads these lines.
        log.debug("lease pass took %.1f ms", (time.perf_counter() - started) * 1000)
        if time.monotonic() - self._last_sweep > SWEEP_EVERY_S and self._outage.settled(self.connection):
            started = time.perf_counter()
            self.sweep()
            log.debug("sweep took %.1f ms", (time.perf_counter() - started) * 1000)
        if time.monotonic() - self._last_trim > TRIM_EVERY_S:
            self.trim()

    def expire_leases(self) -> int:
        """Cancels queued jobs whose client left or whose start deadline passed; returns how many."""
        raw = self.connection.hgetall(self.keys.leases)
        leases: list[tuple[str, Lease]] = []
        for job_id_raw, blob in raw.items():
            job_id = as_text(job_id_raw)
            try:
                leases.append((job_id, Lease.model_validate_json(blob)))
            except ValidationError:
                log.warning("dropping an unreadable lease for job %s", job_id)
                self.connection.hdel(self.keys.leases, job_id)
        if not leases:
            return 0
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id, _ in leases:
                pipe.exists(self.keys.waiting(job_id))
                pipe.exists(self.keys.start_by(job_id))
            alive = pipe.execute()
        canceled = 0
        for i, (job_id, lease) in enumerate(leases):
            waited_for, in_time = alive[2 * i], alive[2 * i + 1]
            if lease.waiting and not waited_for:
                code, message = ErrorCode.CLIENT_GONE, "its client stopped waiting before a worker took it"
            elif lease.start_by and not in_time:
                code, message = ErrorCode.EXPIRED, "not started within its start deadline"
            else:
                continue
            if cancel_queued(self.connection, self.keys, job_id, lease.queue_key, code, message):
                canceled += 1
                count_ended(self.connection, self.keys, lease.model, "canceled", code)
                log.info("job %s of %s canceled: %s", job_id, lease.model, message)
            else:
                # A worker took it first; the worker checks the same keys before it runs it.
                self.connection.hdel(self.keys.leases, job_id)
        return canceled

    def sweep(self) -> int:
        """Fails (or retries) the started jobs of every worker whose heartbeat expired."""
        self._last_sweep = time.monotonic()
        ended = 0
        for model in self.models():
            count = fail_orphans(
                self.connection, self.keys, model, "hostler.", reason="its heartbeat expired", skip_live=True
            )
            if count:
                log.warning("%d job(s) of %s ended: their worker stopped heartbeating", count, model)
            ended += count
        return ended

    def trim(self) -> None:
        """Drops ended jobs from rq's finished, failed and canceled registries once their TTL passed."""
        self._last_trim = time.monotonic()
        for model in self.models():
            for priority in PRIORITIES:
                queue = make_queue(self.connection, self.keys.queue_name(model, priority))
                for registry in (
                    queue.finished_job_registry,
                    queue.failed_job_registry,
                    queue.canceled_job_registry,
                ):
                    registry.cleanup()

    def models(self) -> list[str]:
        """Every model with an rq queue under this prefix."""
        names = (
            as_text(k).removeprefix(Queue.redis_queue_namespace_prefix)
            for k in self.connection.smembers(Queue.redis_queues_keys)
        )
        return sorted({m for name in names if (m := self.keys.model_of_queue(name)) is not None})


def clean_up(connection: redis.Redis, keys: Keys, model: str, older_than_s: float) -> int:
    """Cancels the jobs of a model that have waited longer than older_than_s; returns how many."""
    now = datetime.now(timezone.utc)
    removed = 0
    for key in queue_keys(keys, model):
        ids = [as_text(i) for i in connection.lrange(key, 0, -1)]
        with connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(RqJob.key_for(job_id), "enqueued_at")
            stamps = pipe.execute()
        for job_id, stamp in zip(ids, stamps, strict=True):
            enqueued = _parse_time(stamp)
            if enqueued is not None and (now - enqueued).total_seconds() <= older_than_s:
                continue
            message = f"removed by clean-up: waited longer than {older_than_s:g} s"
            removed += cancel_queued(connection, keys, job_id, key, ErrorCode.CANCELED, message)
    count_ended(connection, keys, model, "canceled", ErrorCode.CANCELED, removed)
    return removed


def _parse_time(raw: bytes | None) -> datetime | None:
    """rq's timestamp; a job without one (pushed by hand) counts as old."""
    if raw is None:
        return None
    try:
        return datetime.strptime(as_text(raw), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


__all__ = ["Janitor", "clean_up"]
