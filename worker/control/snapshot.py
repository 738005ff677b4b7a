"""What the controller knows each step: the cluster read from Redis, and seen as the policy sees it.

`read_snapshot` reads host states (an expired one is a dead host), assignments, worker
reports, specs and queue lengths in four round trips (two of them pipelines), plus one for
the catalogs of the hosts whose catalog changed (rarely: a model pulled, an agent started);
`Snapshot.views` turns that into the HostViews `placement.choose_host` weighs.

A step must cost about as much as the hosts and models it reads, never their product (at
1,000 hosts and 2,000 models the product is two million): the snapshot indexes assignments,
workers and model facts by model once, keeps them true as the controller assigns and
unassigns, and rebuilds a HostView only for the host that changed. `ReportCache` keeps the
parsed reports between steps: a host heartbeats every 2 s and the leader steps every 0.5 s,
so most states it reads are the bytes it parsed last time, and nearly every catalog is the one
it holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import redis
from hostler.client._rqstore import queue_keys
from hostler.schemas import (
    Assignment,
    HostCatalog,
    HostReport,
    HostState,
    Keys,
    ModelInfo,
    ModelSpec,
    WorkerReport,
    as_text,
    join_report,
)
from pydantic import ValidationError

from .each import each
from .placement import GpuView, HostView, Resident

__all__ = ["ReportCache", "Snapshot", "read_snapshot"]

log = logging.getLogger("hostler.controller")


@dataclass
class Snapshot:
    """What the leader read this step: reports, assignments, workers, specs and queue lengths.

    The controller changes it as it decides (a placement, an eviction) through `assign` and
    `unassign`, so later decisions of the same step see the earlier ones."""

    now: float
    reports: dict[str, HostReport]
    dead: list[str]
    assignments: dict[str, dict[str, Assignment]]
    workers: dict[tuple[str, str], WorkerReport]
    specs: dict[str, ModelSpec]
    queues: dict[str, int]
    # Each host's view before placements, made once per report (ReportCache), not once per step.
    bare: dict[str, HostView] = field(default_factory=dict)
    # The specs as read, to refuse a load only while its spec is still the one decided on.
    raw_specs: dict[str, bytes] = field(default_factory=dict)
    # The reports' models indexed by id (`model_index`); read_snapshot passes the one its cache
    # keeps between steps, and the snapshot never changes it.
    infos: dict[str, ModelInfo] | None = None
    _by_model: dict[str, dict[str, Assignment]] = field(init=False, repr=False)
    _infos: dict[str, ModelInfo] = field(init=False, repr=False)
    _slots: dict[str, int] = field(init=False, repr=False)
    _views: dict[str, HostView] = field(init=False, repr=False)
    _placed: dict[str, tuple[Assignment, ...]] = field(init=False, repr=False)
    _touched: set[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_model = {}
        for host, placed in self.assignments.items():
            for model, assignment in placed.items():
                self._by_model.setdefault(model, {})[host] = assignment
        self._infos = self.infos if self.infos is not None else model_index(self.reports.values())
        self._slots = {}
        for (_host, model), worker in self.workers.items():
            self._slots[model] = self._slots.get(model, 0) + max(0, worker.slots - len(worker.running_jobs))
        self._views = {}
        self._placed = {}
        self._touched = set()

    def models(self) -> set[str]:
        return set(self._infos) | set(self.queues) | set(self._by_model)

    def active(self, demanded: Iterable[str] = ()) -> set[str]:
        """The models a step has anything to decide for: placed, waited for, asked for by a
        spec or by demand. Most models on a thousand disks are none of these, and a pass over
        them would cost the step as much as the ones that are."""
        waiting = {m for m, n in self.queues.items() if n}
        placed = {m for m, hosts in self._by_model.items() if hosts}
        return placed | waiting | set(self.specs) | set(demanded)

    def free_slots(self, model: str) -> int:
        """Jobs the model's live workers could start now without queueing (continuous batching)."""
        return self._slots.get(model, 0)

    def placed(self, model: str) -> list[Assignment]:
        """The model's workers that should run, by host name (not where it keeps crashing);
        a new list the caller may change. Several passes of a step ask for the same model."""
        kept = self._placed.get(model)
        if kept is None:
            placed = self._by_model.get(model, {})
            kept = tuple(placed[host] for host in sorted(placed) if model not in self.reports[host].crashing)
            self._placed[model] = kept
        return list(kept)

    def placements(self, model: str) -> list[tuple[str, Assignment]]:
        """Every host the model is assigned to, crashing or not, by host name."""
        placed = self._by_model.get(model, {})
        return [(host, placed[host]) for host in sorted(placed)]

    def info(self, model: str) -> ModelInfo | None:
        return self._infos.get(model)

    @property
    def touched(self) -> set[str]:
        """The hosts the controller assigned to or unassigned from in this snapshot."""
        return self._touched

    def assign(self, host: str, assignment: Assignment) -> None:
        self.assignments.setdefault(host, {})[assignment.model] = assignment
        self._by_model.setdefault(assignment.model, {})[host] = assignment
        self._changed_on(host, assignment.model)

    def unassign(self, host: str, model: str) -> None:
        self.assignments.get(host, {}).pop(model, None)
        self._by_model.get(model, {}).pop(host, None)
        self._changed_on(host, model)

    def _changed_on(self, host: str, model: str) -> None:
        self._touched.add(host)
        self._views.pop(host, None)
        self._placed.pop(model, None)

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
        """Every live host as the policy sees it (a host's view is rebuilt only when it changed)."""
        return [self.view(host) for host in sorted(self.reports)]

    def view(self, host: str) -> HostView:
        found = self._views.get(host)
        if found is not None:
            return found
        report = self.reports[host]
        residents = [self.resident(host, a) for a in self.assignments.get(host, {}).values()]
        placed = {r.model for r in residents}
        # Workers still finishing after being unassigned hold memory the policy may not give away.
        for worker in report.workers:
            if worker.model not in placed:
                stopping = Resident(worker.model, worker.rss_bytes, rss=worker.rss_bytes, busy=True, stopping=True)
                residents.append(stopping)
        bare = self.bare.get(host) or host_view(report)
        found = replace(bare, residents=tuple(residents)) if residents else bare
        self._views[host] = found
        return found


def model_index(reports: Iterable[HostReport]) -> dict[str, ModelInfo]:
    """Every model on the hosts' disks by id, as the first host that could estimate it reports it."""
    infos: dict[str, ModelInfo] = {}
    for report in reports:
        for info in report.models:
            known = infos.get(info.id)
            # A model no host could estimate still has a size.
            if known is None or (known.estimate_bytes is None and info.estimate_bytes is not None):
                infos[info.id] = info
    return infos


def host_view(report: HostReport) -> HostView:
    """A host as the policy sees it before anything is placed on it."""
    return HostView(
        host=report.host,
        capacity=report.capacity_bytes,
        available=report.ram_available_bytes,
        models_on_disk=frozenset(m.id for m in report.models),
        crashing=frozenset(report.crashing),
        unavailable={m.id: m.unavailable_reason or "unavailable" for m in report.models if not m.available},
        gpus=tuple(GpuView(g.index, g.total_bytes, g.free_bytes) for g in report.gpus),
    )


class ReportCache:
    """Parsed reports kept between steps, by the bytes they were parsed from, with what is
    derived from a host's report alone (its bare view), so that a state read again costs a
    comparison of bytes and nothing else, and a catalog is read only when its digest changed."""

    def __init__(self) -> None:
        self._states: dict[str, tuple[bytes, HostState]] = {}
        self._catalogs: dict[str, HostCatalog] = {}
        # A host's report and bare view, with the state and catalog they were joined from.
        self._hosts: dict[str, tuple[HostState, HostCatalog, HostReport, HostView]] = {}
        self._workers: dict[str, tuple[bytes, WorkerReport]] = {}
        self._assigned: dict[str, tuple[tuple[bytes, ...], dict[str, Assignment]]] = {}
        # The model index of the last step, with the hosts and catalogs it was made from: ten
        # thousand models on a thousand disks, which change when a catalog does, not every step.
        self._index: tuple[tuple[tuple[str, HostCatalog], ...], dict[str, ModelInfo]] | None = None

    def state(self, host: str, raw: bytes) -> HostState:
        kept = self._states.get(host)
        if kept is not None and kept[0] == raw:
            return kept[1]
        state = HostState.model_validate_json(raw)
        self._states[host] = (raw, state)
        return state

    def wants_catalog(self, host: str, state: HostState) -> bool:
        """Whether the catalog the state names is not the one held."""
        kept = self._catalogs.get(host)
        return kept is None or kept.digest != state.catalog

    def catalog(self, host: str, state: HostState, raw: bytes | str | None) -> None:
        """Keeps a catalog read for a state; one that is gone, or not the one the state names
        (the host wrote both again between the two reads), is not kept: the host's report joins
        the catalog held, if any, until a later step reads the right one."""
        if raw is None:
            return
        catalog = HostCatalog.model_validate_json(raw)
        if catalog.digest == state.catalog:
            self._catalogs[host] = catalog

    def report(self, host: str, state: HostState) -> HostReport | None:
        """The host's report, or None while no catalog of it has been read."""
        catalog = self._catalogs.get(host)
        if catalog is None:
            return None
        kept = self._hosts.get(host)
        if kept is not None and kept[0] is state and kept[1] is catalog:
            return kept[2]
        report = join_report(state, catalog)
        self._hosts[host] = (state, catalog, report, host_view(report))
        return report

    def model_index(self, reports: dict[str, HostReport]) -> dict[str, ModelInfo]:
        """`model_index` of these reports, made again only when a host or its catalog changed."""
        made_from = tuple((host, self._hosts[host][1]) for host in reports)
        if self._index is not None and len(self._index[0]) == len(made_from):
            # Catalogs compared by identity: a catalog read again is a new object.
            if all(a[0] == b[0] and a[1] is b[1] for a, b in zip(self._index[0], made_from, strict=True)):
                return self._index[1]
        infos = model_index(reports.values())
        self._index = (made_from, infos)
        return infos

    def bare(self, hosts: Iterable[str]) -> dict[str, HostView]:
        return {h: self._hosts[h][3] for h in hosts if h in self._hosts}

    def worker(self, name: str, raw: bytes) -> WorkerReport:
        kept = self._workers.get(name)
        if kept is not None and kept[0] == raw:
            return kept[1]
        report = WorkerReport.model_validate_json(raw)
        self._workers[name] = (raw, report)
        return report

    def assignments(self, host: str, raw: list[bytes]) -> dict[str, Assignment]:
        """A host's assignment hash, as HGETALL's flat reply (field, value, ...)."""
        values = tuple(raw[1::2])
        kept = self._assigned.get(host)
        if kept is not None and kept[0] == values:
            return dict(kept[1])
        placed = _assignments(values)
        self._assigned[host] = (values, placed)
        return dict(placed)

    def keep_only(self, hosts: set[str], workers: set[str]) -> None:
        """Forgets what is gone, so the cache is as large as the cluster, no larger."""
        for cached in (self._states, self._catalogs, self._hosts):
            for name in set(cached) - hosts:
                del cached[name]
        for name in set(self._assigned) - hosts:
            del self._assigned[name]
        for name in set(self._workers) - workers:
            del self._workers[name]


def read_snapshot(connection: redis.Redis, keys: Keys, cache: ReportCache | None = None) -> Snapshot:
    """The cluster as Redis holds it now (one host report expired: that host is in `dead`)."""
    cache = cache or ReportCache()
    hosts = sorted(as_text(h) for h in connection.smembers(keys.hosts))
    worker_names = sorted(as_text(w) for w in connection.smembers(keys.workers))
    with connection.pipeline(transaction=False) as pipe:
        pipe.mget([keys.host(h) for h in hosts]) if hosts else pipe.echo("")
        each(pipe, "HGETALL", [keys.assignments(h) for h in hosts])
        pipe.mget([keys.worker(w) for w in worker_names]) if worker_names else pipe.echo("")
        replies = pipe.execute()
    dead: list[str] = []
    states: dict[str, HostState] = {}
    for host, blob in zip(hosts, replies[0] if hosts else [], strict=True):
        if blob is None:
            dead.append(host)
        else:
            states[host] = cache.state(host, blob)
    stale = [host for host, state in states.items() if cache.wants_catalog(host, state)]
    if stale:
        for host, blob in zip(stale, connection.mget([keys.host_catalog(h) for h in stale]), strict=True):
            cache.catalog(host, states[host], blob)
    # A host whose catalog could not be read yet is in neither `reports` nor `dead`: it sits
    # this step out, and is not buried while its state lives.
    reports: dict[str, HostReport] = {}
    assignments: dict[str, dict[str, Assignment]] = {}
    for i, host in enumerate(hosts):
        state = states.get(host)
        joined = cache.report(host, state) if state is not None else None
        if joined is not None:
            reports[host] = joined
            assignments[host] = cache.assignments(host, replies[1][i])
    workers: dict[tuple[str, str], WorkerReport] = {}
    for name, blob in zip(worker_names, replies[-1] if worker_names else [], strict=False):
        if blob is not None:
            report = cache.worker(name, blob)
            workers[(report.host, report.model)] = report
    cache.keep_only(set(states), set(worker_names))
    infos = cache.model_index(reports)
    models = sorted(set(infos).union(*assignments.values()))
    with connection.pipeline(transaction=False) as pipe:
        each(pipe, "LLEN", [key for model in models for key in queue_keys(keys, model)])
        pipe.mget([keys.spec(m) for m in models]) if models else pipe.echo("")
        lengths, raw_specs = pipe.execute() if models else ([], [])
    queues = {m: int(lengths[2 * i]) + int(lengths[2 * i + 1]) for i, m in enumerate(models)}
    specs = {m: spec for m, raw in zip(models, raw_specs, strict=True) if (spec := _spec(raw)) is not None}
    raw = {m: blob for m, blob in zip(models, raw_specs, strict=True) if blob is not None}
    bare = cache.bare(reports)
    return Snapshot(time.time(), reports, dead, assignments, workers, specs, queues, bare, raw_specs=raw, infos=infos)


def _assignments(values: Iterable[bytes]) -> dict[str, Assignment]:
    placed: dict[str, Assignment] = {}
    for value in values:
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
