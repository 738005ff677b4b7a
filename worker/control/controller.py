"""The placement controller: decides which host runs a worker for which model.

Several may run; one leads (a Redis lock with an expiry it keeps renewing) and the rest
wait to take over. Each step the leader reads the hosts' reports, the assignments, the
worker reports, the specs written by `client.load` and the queue lengths (`snapshot.py`),
then: buries hosts whose report expired (failing the jobs their workers were running),
unloads models past their keep_alive and surplus replicas, and places models that jobs
wait for (evicting idle ones if needed, or failing the jobs with NoCapacity). Jobs of a
single worker that stopped heartbeating are the janitor's. The policy itself is in
`placement.py`, the memory a worker needs in `memory.estimate`; this module only decides
and writes Redis.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import redis
from hostler.schemas import (
    DEFAULT_KEEP_ALIVE_S,
    Assignment,
    ErrorCode,
    Keys,
    PlacementPolicy,
    as_text,
)
from hostler.worker.memory.estimate import Need, worker_need
from hostler.worker.outage import REDIS_OUTAGE, OutageBackoff, OutageGuard

from .endings import fail_orphans, fail_queued
from .placement import Demand, NoFit, Placement, choose_host, fits_once_settled, keep_alive_expired
from .snapshot import ReportCache, Snapshot, read_snapshot
from .view import ViewWriter

log = logging.getLogger("hostler.controller")

LOCK_TTL_S = 5.0
# Python's full garbage collection walks every object alive, and the controller keeps a
# thousand parsed host reports (a hundred thousand objects): left to itself it ran every few
# steps, adding about 250 ms to the step it fell in (scripts/simulate_hosts.py). The reports
# hold no reference cycles, so the full collection runs between steps, this often, instead.
FULL_GC_EVERY_S = 60.0

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def _defer_full_collections() -> tuple[int, int, int]:
    """Keeps the young generations collected as usual and the oldest for `run`'s own cadence
    (process-wide: in `hostler up` the agent and janitor threads share it, and gain the same).
    Returns the thresholds to restore when the controller stops."""
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], 1_000_000)
    return before


@dataclass(frozen=True)
class Autoscale:
    """Add a replica while more than `queue_length` jobs wait beyond the free slots of the
    model's workers for `up_after_s`; drop it once the queue has been empty for `down_after_s`.

    A worker runs several jobs at once, so a queue its free slots will absorb at the next
    step is no reason for another replica; only what no slot can start counts."""

    queue_length: int = 8
    up_after_s: float = 5.0
    down_after_s: float = 30.0


@dataclass
class Controller:
    connection: redis.Redis
    keys: Keys
    policy: PlacementPolicy = "most-free"
    autoscale: Autoscale | None = None
    name: str = field(default_factory=lambda: f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
    leading: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _long_since: dict[str, float] = field(default_factory=dict)
    _empty_since: dict[str, float] = field(default_factory=dict)
    _extra: dict[str, int] = field(default_factory=dict)
    _outage: OutageGuard = field(default_factory=OutageGuard)
    _reports: ReportCache = field(default_factory=ReportCache)
    _view: ViewWriter = field(default_factory=ViewWriter)

    def __post_init__(self) -> None:
        self._renew = self.connection.register_script(_RENEW)
        self._release = self.connection.register_script(_RELEASE)

    # -- leadership ---------------------------------------------------------------

    def run(self) -> None:
        backoff = OutageBackoff(log, self._stop.wait)
        thresholds = _defer_full_collections()
        try:
            self._lead_until_stopped(backoff)
        finally:
            gc.set_threshold(*thresholds)
        self.resign()

    def _lead_until_stopped(self, backoff: OutageBackoff) -> None:
        collected = time.monotonic()
        while not self._stop.is_set():
            try:
                if self.lead():
                    self.step()
                else:
                    self._stop.wait(1.0)
                if time.monotonic() - collected > FULL_GC_EVERY_S:
                    gc.collect()
                    collected = time.monotonic()
                backoff.succeeded()
            except REDIS_OUTAGE as exc:
                self._outage.lost_redis()
                self.leading = False
                backoff.failed(exc)

    def stop(self) -> None:
        self._stop.set()

    def lead(self) -> bool:
        """Takes or keeps the leader lock; False while another controller holds it."""
        ttl_ms = int(LOCK_TTL_S * 1000)
        if self.leading:
            self.leading = bool(self._renew(keys=[self.keys.controller], args=[self.name, ttl_ms]))
            if not self.leading:
                log.warning("%s lost the controller lock", self.name)
        else:
            self.leading = bool(self.connection.set(self.keys.controller, self.name, nx=True, px=ttl_ms))
            if self.leading:
                self._view.forget()
                log.info("%s leads placement", self.name)
        return self.leading

    def resign(self) -> None:
        if self.leading:
            try:
                self._release(keys=[self.keys.controller], args=[self.name])
            except redis.RedisError:
                pass
            self.leading = False

    # -- one step -----------------------------------------------------------------

    def step(self, wait: float = 0.5) -> None:
        demanded = self._wait_demand(wait)
        started, cpu = time.perf_counter(), time.thread_time()
        # The young collections a step's allocations set off (the reports it parses and keeps
        # survive into them) took a tenth of its time at a thousand hosts: they run after it,
        # before the wait for demand, where they delay no placement.
        collecting = gc.isenabled()
        gc.disable()
        try:
            hosts, models = self._decide(demanded)
        finally:
            if collecting:
                gc.enable()
        took, took_cpu = (time.perf_counter() - started) * 1000, (time.thread_time() - cpu) * 1000
        collected = time.thread_time()
        if collecting:
            gc.collect(1)
        # scripts/simulate_hosts.py reads these lines: the step's own work, not its wait for demand;
        # its CPU time too, which a machine shared with other work does not inflate.
        log.debug(
            "step took %.1f ms, %.1f ms of CPU (%d hosts, %d models, %d demanded), then %.1f ms collecting",
            took,
            took_cpu,
            hosts,
            models,
            len(demanded),
            (time.thread_time() - collected) * 1000,
        )

    def _decide(self, demanded: set[str]) -> tuple[int, int]:
        """Reads the cluster and decides; returns the hosts and models it decided for."""
        snap = self.read()
        # Asked every step, dead hosts or not: the guard learns which server answers before a
        # failover, so a promoted replica whose keys expired meanwhile is told apart even when
        # redis-py's retries hid the outage from this loop.
        settled = self._outage.settled(self.connection)
        if snap.dead and settled:
            for host in snap.dead:
                self._bury(host, snap)
        self._expire_keep_alive(snap)
        models = sorted(snap.active(demanded))
        desired = {m: self._desired(m, snap) for m in models}
        for model in models:
            self._trim_replicas(model, snap, desired[model])
        for model in models:
            self._place(model, snap, max(desired[model], 1 if model in demanded else 0))
        self._view.write(self.connection, self.keys, snap)
        return len(snap.reports), len(models)

    def _wait_demand(self, wait: float) -> set[str]:
        popped = self.connection.blpop([self.keys.demand], timeout=wait)
        if popped is None:
            return set()
        raw: list[object] = [popped[1]]
        # Many clients may have asked for the same model: one placement answers them all.
        while (more := self.connection.lpop(self.keys.demand)) is not None:
            raw.append(more)
        return {as_text(r) for r in raw}

    def read(self) -> Snapshot:
        return read_snapshot(self.connection, self.keys, self._reports)

    # -- hosts that died ------------------------------------------------------------

    def _bury(self, host: str, snap: Snapshot) -> None:
        assigned = self.connection.hgetall(self.keys.assignments(host))
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.assignments(host), self.keys.wake(host), self.keys.host_catalog(host))
            pipe.srem(self.keys.hosts, host)
            pipe.execute()
        failed = 0
        # Only what ran there: the assignments it had and the workers that reported from it. A
        # worker of another model that died with it is the janitor's (its sweep, every 3 s); a
        # pass over every model here would cost thousands of round trips per dead host.
        ran = {as_text(m) for m in assigned} | {model for (where, model) in snap.workers if where == host}
        for model in sorted(ran):
            failed += fail_orphans(
                self.connection,
                self.keys,
                model,
                f"hostler.{host}.",
                reason=f"host {host} stopped heartbeating",
                skip_live=True,
            )
        log.warning("host %s is gone: %d assignment(s) dropped, %d running job(s) failed", host, len(assigned), failed)

    # -- unloading ----------------------------------------------------------------

    def _expire_keep_alive(self, snap: Snapshot) -> None:
        """Unloads a model whose replicas have all been idle past its keep_alive.

        keep_alive is the model's, not each replica's: a replica that got no work while its
        sibling did stays, and surplus replicas are trimmed separately."""
        for model in sorted(snap.active()):
            placed = snap.placements(model)
            if not placed:
                continue
            spec = snap.specs.get(model)
            keep_alive = spec.keep_alive_s if spec is not None else DEFAULT_KEEP_ALIVE_S
            residents = [snap.resident(host, a) for host, a in placed]
            newest = max(residents, key=lambda r: r.last_used)
            if not all(keep_alive_expired(r, keep_alive, snap.now) for r in residents):
                continue
            log.info(
                "unloading %s: idle for %.0fs, past its keep_alive of %ss",
                model,
                snap.now - newest.last_used,
                keep_alive,
            )
            for host, _ in placed:
                self._unassign(host, model, snap)
            if spec is not None:
                # The spec asked for it to stay loaded; keep_alive ends that request too.
                self.connection.delete(self.keys.spec(model))
                snap.specs.pop(model, None)

    def _trim_replicas(self, model: str, snap: Snapshot, desired: int) -> None:
        placed = snap.placed(model)
        surplus = len(placed) - max(desired, 1)
        if surplus <= 0:
            return
        idle = [
            a
            for a in placed
            if not (r := snap.resident(a.host, a)).busy and not r.pinned and snap.queues.get(model, 0) == 0
        ]
        idle.sort(key=lambda a: snap.resident(a.host, a).last_used)
        for assignment in idle[:surplus]:
            log.info("removing a surplus replica of %s from %s", model, assignment.host)
            self._unassign(assignment.host, model, snap)

    # -- placing ------------------------------------------------------------------

    def _desired(self, model: str, snap: Snapshot) -> int:
        """Workers the model should have now: its spec's replicas, else one while it has work
        or is placed, plus what autoscale added. Called once per model and step."""
        spec = snap.specs.get(model)
        waiting = snap.queues.get(model, 0)
        if spec is not None:
            base = spec.replicas
        else:
            base = 1 if waiting or snap.placed(model) else 0
        running_extra = len(snap.placed(model)) - base
        return base + self._scaled(model, waiting, snap.free_slots(model), snap.now, running_extra) if base else 0

    def _scaled(self, model: str, waiting: int, free_slots: int, now: float, running_extra: int) -> int:
        """Replicas autoscale adds on top of what was asked for (running_extra of them run)."""
        scale = self.autoscale
        if scale is None:
            return 0
        extra = self._extra.get(model, 0)
        if waiting - free_slots > scale.queue_length:
            self._empty_since.pop(model, None)
            since = self._long_since.setdefault(model, now)
            # One more only once the last one asked for runs: no host may have room for it.
            if now - since >= scale.up_after_s and running_extra >= extra:
                extra += 1
                self._long_since[model] = now
                log.info("autoscale: %s has %d waiting jobs; asking for replica %d", model, waiting, extra + 1)
        else:
            self._long_since.pop(model, None)
            if waiting == 0 and extra:
                since = self._empty_since.setdefault(model, now)
                if now - since >= scale.down_after_s:
                    extra -= 1
                    self._empty_since[model] = now
        self._extra[model] = extra
        return extra

    def _place(self, model: str, snap: Snapshot, wanted: int) -> None:
        placed = snap.placed(model)
        while len(placed) < wanted:
            decision = self._choose(model, snap)
            if isinstance(decision, NoFit):
                if self._settling(model, snap):
                    log.debug("%s waits for stopping workers to free memory", model)
                elif not decision.on_disk:
                    # Jobs wait for a host with the model to come (back); their own deadlines bound it.
                    log.debug("no live host has %s on disk; %d job(s) wait", model, snap.queues.get(model, 0))
                elif not placed:
                    self._refuse(model, decision.message, snap)
                else:
                    log.debug("no room for another replica of %s: %s", model, decision.message)
                return
            for victim in decision.evict:
                log.info("evicting idle %s from %s to make room for %s", victim, decision.host, model)
                self._unassign(decision.host, victim, snap)
            reason = "jobs waiting" if len(placed) == 0 else "replicas"
            placed.append(self._assign(decision, model, snap, reason))

    def _need(self, model: str, snap: Snapshot) -> Need:
        """What a new worker of the model reserves (RAM, VRAM on one GPU), and how that adds up."""
        spec = snap.specs.get(model)
        return worker_need(snap.info(model), spec.params if spec is not None else None)

    @staticmethod
    def _demand(need: Need) -> Demand:
        return Demand(need.ram, need.vram, need.ram_without_gpu)

    def _settling(self, model: str, snap: Snapshot) -> bool:
        return fits_once_settled(model, self._demand(self._need(model, snap)), snap.views())

    def _choose(self, model: str, snap: Snapshot) -> Placement | NoFit:
        need = self._need(model, snap)
        return choose_host(model, self._demand(need), snap.views(), self.policy, need_text=need.text)

    def _refuse(self, model: str, message: str, snap: Snapshot) -> None:
        crashing = {h: r.crashing[model] for h, r in snap.reports.items() if model in r.crashing}
        if crashing:
            code = ErrorCode.MODEL_CRASHING
            message = f"model {model!r} keeps crashing: " + "; ".join(f"{h}: {why}" for h, why in crashing.items())
        else:
            code = ErrorCode.NO_CAPACITY
        count = fail_queued(self.connection, self.keys, model, code, message, spec_read=snap.raw_specs.get(model))
        if count is None:
            log.debug("the spec of %s changed since this step read it; deciding again next step", model)
            return
        snap.queues[model] = 0
        snap.specs.pop(model, None)
        if count:
            log.warning("failed %d waiting job(s) of %s: %s", count, model, message)

    def _assign(self, decision: Placement, model: str, snap: Snapshot, reason: str) -> Assignment:
        host = decision.host
        need = self._need(model, snap)
        on_gpu = decision.gpu is not None
        # A host without GPUs holds every layer in its own memory, whatever n_gpu_layers says.
        ram = need.ram if on_gpu or not need.vram or snap.reports[host].gpus else need.ram_without_gpu
        assignment = Assignment(
            model=model,
            host=host,
            estimate_bytes=ram,
            gpu=decision.gpu,
            vram_bytes=need.vram if on_gpu else 0,
            placed_at=snap.now,
            reason=reason,
        )
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.assignments(host), model, assignment.model_dump_json())
            pipe.rpush(self.keys.wake(host), "1")
            pipe.expire(self.keys.wake(host), 10)
            pipe.execute()
        snap.assign(host, assignment)
        log.info("placed %s on %s%s (%s)", model, host, f" GPU {decision.gpu}" if on_gpu else "", reason)
        return assignment

    def _unassign(self, host: str, model: str, snap: Snapshot) -> None:
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hdel(self.keys.assignments(host), model)
            pipe.rpush(self.keys.wake(host), "1")
            pipe.expire(self.keys.wake(host), 10)
            pipe.execute()
        snap.unassign(host, model)
