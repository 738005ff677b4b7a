"""What the controller knows each step: the cluster read from Redis, and seen as the policy sees it.

`read_snapshot` reads host reports (an expired one is a dead host), assignments, worker
reports, specs and queue lengths in four round trips (two of them pipelines); `Snapshot.views` turns that
into the HostViews `placement.choose_host` weighs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from hostler.client._rqstore import queue_keys
from hostler.schemas import Assignment, HostReport, Keys, ModelInfo, ModelSpec, WorkerReport, as_text
from pydantic import ValidationError

from .placement import GpuView, HostView, Resident

__all__ = ["Snapshot", "read_snapshot"]

log = logging.getLogger("hostler.controller")


@dataclass
class Snapshot:
    """What the leader read this step: reports, assignments, workers, specs and queue lengths.

    The controller changes it as it decides (a placement, an eviction), so later decisions
    of the same step see the earlier ones."""

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

    def free_slots(self, model: str) -> int:
        """Jobs the model's live workers could start now without queueing (continuous batching)."""
        return sum(
            max(0, report.slots - len(report.running_jobs))
            for (_host, name), report in self.workers.items()
            if name == model
        )

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

    # -- the cluster as the policy sees it ------------------------------------------

    def resident(self, host: str, assignment: Assignment) -> Resident:
        """A placed model as the policy weighs it: what it holds, whether it may be evicted."""
        model = assignment.model
        worker = self.workers.get((host, model))
        rss = worker.rss_bytes if worker is not None else 0
        spec = self.specs.get(model)
        last = max(assignment.placed_at, (worker.last_job_at or 0.0) if worker is not None else 0.0)
        # The reservation stays after loading: the KV cache and compute buffers grow into it
        # as contexts fill, so RSS right after a load understates what the model will hold.
        return Resident(
            model=model,
            bytes=max(rss, assignment.estimate_bytes),
            rss=rss,
            busy=self.queues.get(model, 0) > 0 or (worker is not None and worker.current_job is not None),
            pinned=spec is not None and spec.pinned,
            last_used=last,
            gpu=assignment.gpu,
            vram=assignment.vram_bytes,
            loaded=worker is not None and worker.loaded,
        )

    def views(self) -> list[HostView]:
        """Every live host as the policy sees it."""
        views = []
        for host, report in sorted(self.reports.items()):
            residents = [self.resident(host, a) for a in self.assignments.get(host, {}).values()]
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
                    gpus=tuple(GpuView(g.index, g.total_bytes, g.free_bytes) for g in report.gpus),
                )
            )
        return views


def read_snapshot(connection: redis.Redis, keys: Keys) -> Snapshot:
    """The cluster as Redis holds it now (one host report expired: that host is in `dead`)."""
    hosts = sorted(as_text(h) for h in connection.smembers(keys.hosts))
    worker_names = sorted(as_text(w) for w in connection.smembers(keys.workers))
    with connection.pipeline(transaction=False) as pipe:
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
    models = sorted({m.id for r in reports.values() for m in r.models} | {m for a in assignments.values() for m in a})
    with connection.pipeline(transaction=False) as pipe:
        for model in models:
            for key in queue_keys(keys, model):
                pipe.llen(key)
            pipe.get(keys.spec(model))
        lengths = pipe.execute()
    queues = {m: int(lengths[3 * i]) + int(lengths[3 * i + 1]) for i, m in enumerate(models)}
    specs = {m: spec for i, m in enumerate(models) if (spec := _spec(lengths[3 * i + 2])) is not None}
    return Snapshot(time.time(), reports, dead, assignments, workers, specs, queues)


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
