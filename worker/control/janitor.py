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
from typing import cast

import redis
from hostler.client._rqstore import cancel_queued, make_queue, queue_keys
from hostler.schemas import PRIORITIES, ErrorCode, Keys, Lease, as_text
from hostler.worker.outage import REDIS_OUTAGE, OutageBackoff, OutageGuard
from hostler.worker.serving.metrics import count_ended
from pydantic import ValidationError
from rq import worker_registration
from rq.job import Job as RqJob
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.worker import Worker as RqWorker

from .each import each
from .endings import fail_orphans

log = logging.getLogger("hostler.janitor")

LEASE_EVERY_S = 0.5
# Leases read per pass: with more queued jobs than this, each pass takes the next slice of the
# hash (HSCAN), so a pass stays short however long the queues grow; a lease is then looked at
# every LEASE_EVERY_S x ceil(leases / LEASE_BATCH). A worker checks the same keys before it runs
# a job, so a late look only frees queue room later; it never runs a job nobody waits for.
LEASE_BATCH = 5000
SWEEP_EVERY_S = 3.0
# rq's own worker trims its registries of ended jobs; hostler's worker is not rq's, so the
# janitor does it, or those sets would outgrow the records they point to.
TRIM_EVERY_S = 60.0

# Each queue's started registry and rq worker set (KEYS in pairs), answered only for the queues
# where either holds anything: the pair's number, then both lists. The sweep asks this of every
# queue every few seconds, and nearly every answer would be two empty lists.
_LISTED = """
local out = {}
for i = 1, #KEYS, 2 do
  local started = redis.call('ZRANGE', KEYS[i], 0, -1)
  local registered = redis.call('SMEMBERS', KEYS[i + 1])
  if #started > 0 or #registered > 0 then
    out[#out + 1] = (i + 1) / 2
    out[#out + 1] = started
    out[#out + 1] = registered
  end
end
return out
"""


@dataclass
class Janitor:
    connection: redis.Redis
    keys: Keys
    max_queue: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _last_sweep: float = 0.0
    _last_trim: float = 0.0
    _outage: OutageGuard = field(default_factory=OutageGuard)
    _lease_cursor: int = 0

    def __post_init__(self) -> None:
        self._listed = self.connection.register_script(_LISTED)

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
        started, cpu = time.perf_counter(), time.thread_time()
        self.expire_leases()
        # scripts/simulate_hosts.py reads these lines (CPU time too: a shared machine does not inflate it).
        log.debug("lease pass took %.1f ms, %.1f ms of CPU", *_since(started, cpu))
        if time.monotonic() - self._last_sweep > SWEEP_EVERY_S and self._outage.settled(self.connection):
            started, cpu = time.perf_counter(), time.thread_time()
            self.sweep()
            log.debug("sweep took %.1f ms, %.1f ms of CPU", *_since(started, cpu))
        if time.monotonic() - self._last_trim > TRIM_EVERY_S:
            self.trim()

    def expire_leases(self) -> int:
        """Cancels queued jobs whose client left or whose start deadline passed; returns how many."""
        # A waiting key lapses while Redis fails over (renewals stop during the election, or went to
        # a server a second failover then discarded), its client still there: until the server has
        # been the same for a settle period, a missing one proves nothing, as in the worker's claim.
        # Asked every pass, so that the first server seen is the baseline a failover is told by.
        judge_waiting = self._outage.recovered(self.connection)
        leases: list[tuple[str, Lease]] = []
        for job_id_raw, blob in self._next_leases().items():
            job_id = as_text(job_id_raw)
            try:
                leases.append((job_id, Lease.model_validate_json(blob)))
            except ValidationError:
                log.warning("dropping an unreadable lease for job %s", job_id)
                self.connection.hdel(self.keys.leases, job_id)
        if not leases:
            return 0
        alive = each(
            self.connection,
            "EXISTS",
            [key for job_id, _ in leases for key in (self.keys.waiting(job_id), self.keys.start_by(job_id))],
        )
        canceled = 0
        for i, (job_id, lease) in enumerate(leases):
            waited_for, in_time = alive[2 * i], alive[2 * i + 1]
            if lease.waiting and not waited_for:
                if not judge_waiting:
                    continue
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

    def _next_leases(self) -> dict[bytes | str, bytes | str]:
        """The next slice of the leases hash (all of it while it holds at most LEASE_BATCH)."""
        if self._lease_cursor == 0 and self.connection.hlen(self.keys.leases) <= LEASE_BATCH:
            return self.connection.hgetall(self.keys.leases)
        found: dict[bytes | str, bytes | str] = {}
        while True:
            self._lease_cursor, page = self.connection.hscan(self.keys.leases, self._lease_cursor, count=LEASE_BATCH)
            found.update(cast(dict[bytes | str, bytes | str], page))
            if self._lease_cursor == 0 or len(found) >= LEASE_BATCH:
                return found

    def sweep(self) -> int:
        """Fails (or retries) the started jobs of every worker whose heartbeat expired."""
        self._last_sweep = time.monotonic()
        ended = 0
        for model in self._with_dead_workers(self.models()):
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

    def _with_dead_workers(self, models: list[str]) -> list[str]:
        """The models that may have a dead worker: one with started jobs or an rq registration
        whose hostler heartbeat key is gone. Three round trips, where `fail_orphans` costs
        several per model: at 2,000 models most have none, so Redis answers only for the
        queues that have anything started or registered."""
        queues = [(m, self.keys.queue_name(m, p)) for m in models for p in PRIORITIES]
        keys = [
            key
            for _, name in queues
            for key in (StartedJobRegistry.key_template.format(name), worker_registration.WORKERS_BY_QUEUE_KEY % name)
        ]
        found = self._listed(keys=keys) if keys else []
        holders: dict[str, set[str]] = {}
        workers: dict[str, set[str]] = {}
        for at in range(0, len(found), 3):
            model = queues[int(found[at]) - 1][0]
            for entry in found[at + 1]:
                # The job's record names its worker.
                holders.setdefault(model, set()).add(StartedJobRegistry.parse_job_id(as_text(entry)))
            for key in found[at + 2]:
                workers.setdefault(model, set()).add(as_text(key).removeprefix(RqWorker.redis_worker_namespace_prefix))
        jobs = sorted({j for ids in holders.values() for j in ids})
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in jobs:
                pipe.hget(RqJob.key_for(job_id), "worker_name")
            names = dict(zip(jobs, (as_text(n) if n is not None else "" for n in pipe.execute()), strict=True))
        every = sorted({names[j] for ids in holders.values() for j in ids} | {w for ws in workers.values() for w in ws})
        heartbeats = each(self.connection, "EXISTS", [self.keys.worker(name) for name in every]) if every else []
        alive = {name for name, up in zip(every, heartbeats, strict=True) if up}
        return [
            model
            for model in models
            if any(names[j] not in alive for j in holders.get(model, ()))
            or any(w not in alive for w in workers.get(model, ()))
        ]

    def models(self) -> list[str]:
        """Every model with an rq queue under this prefix."""
        names = (
            as_text(k).removeprefix(Queue.redis_queue_namespace_prefix)
            for k in self.connection.smembers(Queue.redis_queues_keys)
        )
        return sorted({m for name in names if (m := self.keys.model_of_queue(name)) is not None})


def _since(started: float, cpu: float) -> tuple[float, float]:
    return (time.perf_counter() - started) * 1000, (time.thread_time() - cpu) * 1000


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
