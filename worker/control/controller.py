"""The placement controller: decides which host runs a worker for which model.

Several may run; one leads (a Redis lock with an expiry it keeps renewing) and the rest
wait to take over. Each step the leader reads the hosts' reports, the assignments, the
worker reports, the specs written by `client.load` and the queue lengths, then:
buries hosts whose report expired, fails jobs of workers that stopped heartbeating,
unloads models past their keep_alive and surplus replicas, and places models that jobs
wait for (evicting idle ones if needed, or failing the jobs with NoCapacity). The policy
itself is in `placement.py`; this module only reads and writes Redis.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import redis
from hostler.client._rqstore import queue_keys
from hostler.schemas import (
    DEFAULT_KEEP_ALIVE_S,
    Assignment,
    ClusterView,
    ErrorCode,
    HostReport,
    HostStatus,
    Keys,
    ModelInfo,
    ModelSpec,
    PlacementPolicy,
    WorkerReport,
    format_bytes,
)
from hostler.worker.memory.estimate import kv_cells
from hostler.worker.serving.jobstore import fail_orphans, fail_queued
from pydantic import ValidationError

from .outage import OutageGuard
from .placement import (
    HostView,
    NoFit,
    Placement,
    Resident,
    choose_host,
    fits_once_settled,
    keep_alive_expired,
)

log = logging.getLogger("hostler.controller")

LOCK_TTL_S = 5.0
VIEW_TTL_S = 10
# A worker process before it loads anything (Python, llama.cpp, redis client), measured on
# Linux x86-64 (66 MiB after importing llama_cpp); the memory estimate covers what loading adds.
WORKER_BASE_BYTES = 72 * 1024**2

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


@dataclass(frozen=True)
class Autoscale:
    """Add a replica while a queue stays longer than `queue_length` for `up_after_s`; drop it
    once the queue has been empty for `down_after_s`."""

    queue_length: int = 8
    up_after_s: float = 5.0
    down_after_s: float = 30.0


@dataclass
class Snapshot:
    now: float
    reports: dict[str, HostReport]
    dead: list[str]
    assignments: dict[str, dict[str, Assignment]]
    workers: dict[tuple[str, str], WorkerReport]
    specs: dict[str, ModelSpec]
    queues: dict[str, int]

    def models(self) -> set[str]:
        known = {m.id for r in self.reports.values() for m in r.models}
        return known | set(self.queues) | {m for a in self.assignments.values() for m in a}

    def placed(self, model: str) -> list[Assignment]:
        return [
            a[model]
            for host, a in sorted(self.assignments.items())
            if model in a and model not in self.reports[host].crashing
        ]

    def info(self, model: str) -> ModelInfo | None:
        for report in self.reports.values():
            for info in report.models:
                if info.id == model and info.estimate_bytes is not None:
                    return info
        # A model whose files no host could estimate still has a size.
        return next((i for r in self.reports.values() for i in r.models if i.id == model), None)


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

    def __post_init__(self) -> None:
        self._renew = self.connection.register_script(_RENEW)
        self._release = self.connection.register_script(_RELEASE)

    # -- leadership ---------------------------------------------------------------

    def run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                if self.lead():
                    self.step()
                else:
                    self._stop.wait(1.0)
                backoff = 0.1
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, backoff)
                self._outage.lost_redis()
                self.leading = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self.resign()

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
        snap = self.read()
        if snap.dead and self._outage.settled(self.connection):
            for host in snap.dead:
                self._bury(host, snap)
        self._expire_keep_alive(snap)
        models = sorted(snap.models())
        desired = {m: self._desired(m, snap) for m in models}
        for model in models:
            self._trim_replicas(model, snap, desired[model])
        for model in models:
            self._place(model, snap, max(desired[model], 1 if model in demanded else 0))
        self._publish_view(snap)

    def _wait_demand(self, wait: float) -> set[str]:
        popped = self.connection.blpop([self.keys.demand], timeout=wait)
        if popped is None:
            return set()
        raw: list[object] = [popped[1]]
        # Many clients may have asked for the same model: one placement answers them all.
        while (more := self.connection.lpop(self.keys.demand)) is not None:
            raw.append(more)
        return {r.decode() if isinstance(r, bytes) else str(r) for r in raw}

    def read(self) -> Snapshot:
        keys = self.keys
        hosts = sorted(_text(h) for h in self.connection.smembers(keys.hosts))
        worker_names = sorted(_text(w) for w in self.connection.smembers(keys.workers))
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.mget([keys.host(h) for h in hosts]) if hosts else pipe.echo("")
            for host in hosts:
                pipe.hgetall(keys.assignments(host))
            pipe.mget([keys.worker(w) for w in worker_names]) if worker_names else pipe.echo("")
            replies = pipe.execute()
        reports: dict[str, HostReport] = {}
        dead: list[str] = []
        assignments: dict[str, dict[str, Assignment]] = {}
        for i, host in enumerate(hosts):
            blob = replies[0][i] if hosts else None
            if blob is None:
                dead.append(host)
                continue
            reports[host] = HostReport.model_validate_json(blob)
            assignments[host] = _assignments(replies[1 + i])
        workers: dict[tuple[str, str], WorkerReport] = {}
        for blob in replies[-1] if worker_names else []:
            if blob is not None:
                report = WorkerReport.model_validate_json(blob)
                workers[(report.host, report.model)] = report
        models = sorted(
            {m.id for r in reports.values() for m in r.models} | {m for a in assignments.values() for m in a}
        )
        with self.connection.pipeline(transaction=False) as pipe:
            for model in models:
                for key in queue_keys(keys, model):
                    pipe.llen(key)
                pipe.get(keys.spec(model))
            lengths = pipe.execute()
        queues = {m: int(lengths[3 * i]) + int(lengths[3 * i + 1]) for i, m in enumerate(models)}
        specs = {m: spec for i, m in enumerate(models) if (spec := _spec(lengths[3 * i + 2])) is not None}
        return Snapshot(time.time(), reports, dead, assignments, workers, specs, queues)

    # -- hosts and workers that died ----------------------------------------------

    def _bury(self, host: str, snap: Snapshot) -> None:
        assigned = self.connection.hgetall(self.keys.assignments(host))
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.assignments(host), self.keys.wake(host))
            pipe.srem(self.keys.hosts, host)
            pipe.execute()
        failed = 0
        for model in sorted(snap.models() | {_text(m) for m in assigned}):
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
        for model in sorted(snap.models()):
            placed = [(a.host, a) for host in sorted(snap.assignments) if (a := snap.assignments[host].get(model))]
            if not placed:
                continue
            spec = snap.specs.get(model)
            keep_alive = spec.keep_alive_s if spec is not None else DEFAULT_KEEP_ALIVE_S
            residents = [self._resident(host, a, snap) for host, a in placed]
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
            if not (r := self._resident(a.host, a, snap)).busy and not r.pinned and snap.queues.get(model, 0) == 0
        ]
        idle.sort(key=lambda a: self._resident(a.host, a, snap).last_used)
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
        return base + self._scaled(model, waiting, snap.now, len(snap.placed(model)) - base) if base else 0

    def _scaled(self, model: str, waiting: int, now: float, running_extra: int) -> int:
        """Replicas autoscale adds on top of what was asked for (running_extra of them run)."""
        scale = self.autoscale
        if scale is None:
            return 0
        extra = self._extra.get(model, 0)
        if waiting > scale.queue_length:
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
            placed.append(self._assign(decision.host, model, snap, reason))

    def _need(self, model: str, snap: Snapshot) -> tuple[int, str]:
        """Bytes a new worker of the model reserves, and how that adds up."""
        info = snap.info(model)
        base = f"worker process {format_bytes(WORKER_BASE_BYTES)}"
        if info is None:
            return WORKER_BASE_BYTES, base
        if info.estimate_bytes is None:
            # Unreadable files: place it anyway so the worker fails its jobs with the reason.
            need = info.size_bytes + WORKER_BASE_BYTES
            return need, f"{format_bytes(need)} (file size {format_bytes(info.size_bytes)} + {base})"
        need = info.estimate_bytes + WORKER_BASE_BYTES
        text = f"{info.estimate} + {base}"
        spec = snap.specs.get(model)
        if spec is not None and info.kv_bytes_per_cell and info.estimate_n_ctx is not None:
            kv_delta = (kv_cells(spec.params.n_ctx) - kv_cells(info.estimate_n_ctx)) * info.kv_bytes_per_cell
            if kv_delta:
                need += kv_delta
                text += f", KV cache resized to n_ctx {spec.params.n_ctx}: {kv_delta / 2**20:+.0f} MiB"
        return need, f"{format_bytes(need)} ({text})"

    def _settling(self, model: str, snap: Snapshot) -> bool:
        return fits_once_settled(model, self._need(model, snap)[0], self._views(snap))

    def _choose(self, model: str, snap: Snapshot) -> Placement | NoFit:
        need, text = self._need(model, snap)
        return choose_host(model, need, self._views(snap), self.policy, need_text=text)

    def _refuse(self, model: str, message: str, snap: Snapshot) -> None:
        crashing = {h: r.crashing[model] for h, r in snap.reports.items() if model in r.crashing}
        if crashing:
            code = ErrorCode.MODEL_CRASHING
            message = f"model {model!r} keeps crashing: " + "; ".join(f"{h}: {why}" for h, why in crashing.items())
        else:
            code = ErrorCode.NO_CAPACITY
        count = fail_queued(self.connection, self.keys, model, code, message)
        snap.queues[model] = 0
        if snap.specs.pop(model, None) is not None:
            self.connection.delete(self.keys.spec(model))  # the load that asked for it failed
        if count:
            log.warning("failed %d waiting job(s) of %s: %s", count, model, message)

    def _assign(self, host: str, model: str, snap: Snapshot, reason: str) -> Assignment:
        estimate = self._need(model, snap)[0]
        assignment = Assignment(model=model, host=host, estimate_bytes=estimate, placed_at=snap.now, reason=reason)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.assignments(host), model, assignment.model_dump_json())
            pipe.rpush(self.keys.wake(host), "1")
            pipe.expire(self.keys.wake(host), 10)
            pipe.execute()
        snap.assignments.setdefault(host, {})[model] = assignment
        log.info("placed %s on %s (%s)", model, host, reason)
        return assignment

    def _unassign(self, host: str, model: str, snap: Snapshot) -> None:
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hdel(self.keys.assignments(host), model)
            pipe.rpush(self.keys.wake(host), "1")
            pipe.expire(self.keys.wake(host), 10)
            pipe.execute()
        snap.assignments.get(host, {}).pop(model, None)

    # -- the cluster as the policy sees it ----------------------------------------

    def _resident(self, host: str, assignment: Assignment, snap: Snapshot) -> Resident:
        model = assignment.model
        worker = snap.workers.get((host, model))
        rss = worker.rss_bytes if worker is not None else 0
        spec = snap.specs.get(model)
        last = max(assignment.placed_at, (worker.last_job_at or 0.0) if worker is not None else 0.0)
        # The reservation stays after loading: the KV cache and compute buffers grow into it
        # as contexts fill, so RSS right after a load understates what the model will hold.
        return Resident(
            model=model,
            bytes=max(rss, assignment.estimate_bytes),
            rss=rss,
            busy=snap.queues.get(model, 0) > 0 or (worker is not None and worker.current_job is not None),
            pinned=spec is not None and spec.pinned,
            last_used=last,
        )

    def _views(self, snap: Snapshot) -> list[HostView]:
        views = []
        for host, report in sorted(snap.reports.items()):
            residents = [self._resident(host, a, snap) for a in snap.assignments.get(host, {}).values()]
            placed = {r.model for r in residents}
            # Workers still finishing after being unassigned hold memory the policy may not give away.
            for worker in report.workers:
                if worker.model not in placed:
                    residents.append(
                        Resident(worker.model, worker.rss_bytes, rss=worker.rss_bytes, busy=True, stopping=True)
                    )
            views.append(
                HostView(
                    host=host,
                    capacity=report.capacity_bytes,
                    available=report.ram_available_bytes,
                    models_on_disk=frozenset(m.id for m in report.models),
                    residents=tuple(residents),
                    crashing=frozenset(report.crashing),
                    unavailable={m.id: m.unavailable_reason or "unavailable" for m in report.models if not m.available},
                )
            )
        return views

    def _publish_view(self, snap: Snapshot) -> None:
        hosts = [
            HostStatus.of(snap.reports[v.host], free_bytes=v.free, placed={r.model: r.bytes for r in v.residents})
            for v in self._views(snap)
        ]
        cluster = ClusterView(controller=self.name, hosts=hosts, updated_at=snap.now)
        self.connection.set(self.keys.view, cluster.model_dump_json(), ex=VIEW_TTL_S)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _assignments(raw: dict[bytes, bytes]) -> dict[str, Assignment]:
    placed: dict[str, Assignment] = {}
    for value in raw.values():
        try:
            assignment = Assignment.model_validate_json(value)
        except ValidationError:
            continue
        placed[assignment.model] = assignment
    return placed


def _spec(raw: bytes | None) -> ModelSpec | None:
    if raw is None:
        return None
    try:
        return ModelSpec.model_validate_json(raw)
    except ValidationError:
        log.warning("ignoring an invalid model spec: %.200r", raw)
        return None
