"""Placement policy: which host gets a model, what to evict for it, or why nothing fits.

Pure functions over a snapshot of the cluster; the controller does the reading and writing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from hostler.schemas import PlacementPolicy, format_bytes, free_memory


@dataclass(frozen=True)
class Resident:
    """A model placed on a host: the memory it holds and whether it may be evicted."""

    model: str
    bytes: int  # held: the reservation, or the worker's RSS once that is larger
    rss: int  # what of it the worker already holds, so the OS's free figure already lacks it
    busy: bool  # running a job or jobs waiting in its queue
    pinned: bool = False
    last_used: float = 0.0  # unix time of its last job (or of its placement)
    stopping: bool = False  # no longer placed; its worker is finishing and will free this


@dataclass(frozen=True)
class HostView:
    host: str
    capacity: int  # what the host offers in all (--max-memory, else its RAM)
    available: int  # RAM the OS reports free now; loaded workers are already out of it
    models_on_disk: frozenset[str]
    residents: tuple[Resident, ...] = ()
    crashing: frozenset[str] = frozenset()
    # Models on disk whose engine this host cannot run, with the reason (mlx not installed).
    unavailable: Mapping[str, str] = field(default_factory=dict)

    def can_run(self, model: str) -> bool:
        return model in self.models_on_disk and model not in self.unavailable and model not in self.crashing

    @property
    def committed(self) -> int:
        return sum(r.bytes for r in self.residents)

    @property
    def free(self) -> int:
        # The part of a reservation a worker has not yet taken is not in the OS's figure.
        pending = sum(max(0, r.bytes - r.rss) for r in self.residents)
        return max(0, free_memory(self.capacity, self.available, self.committed, pending))

    def has(self, model: str) -> bool:
        return any(r.model == model and not r.stopping for r in self.residents)

    def settled(self) -> HostView:
        """This host once its stopping workers have exited."""
        rest = tuple(r for r in self.residents if not r.stopping)
        freed = sum(r.rss for r in self.residents if r.stopping)
        return replace(self, available=self.available + freed, residents=rest)


@dataclass(frozen=True)
class Placement:
    host: str
    evict: tuple[str, ...] = ()


@dataclass(frozen=True)
class NoFit:
    message: str
    on_disk: bool = True  # False: no live host has the model at all


@dataclass
class _Option:
    host: HostView
    evict: list[Resident] = field(default_factory=list)


def choose_host(
    model: str,
    need: int,
    hosts: Sequence[HostView],
    policy: PlacementPolicy = "most-free",
    *,
    need_text: str | None = None,
) -> Placement | NoFit:
    """Where a new worker of `model` (needing `need` bytes) goes; a host running one is skipped."""
    candidates = [h for h in hosts if h.can_run(model) and not h.has(model)]
    fitting = [h for h in candidates if h.free >= need]
    if fitting:
        if policy == "best-fit":
            best = min(fitting, key=lambda h: (h.free - need, h.host))
        else:
            best = max(fitting, key=lambda h: (h.free, _reverse(h.host)))
        return Placement(best.host)
    options = [o for h in candidates if (o := _evictions(h, need)) is not None]
    if options:
        # Least recently used first: the option whose newest victim is oldest wins.
        chosen = min(options, key=lambda o: (max(r.last_used for r in o.evict), len(o.evict), o.host.host))
        return Placement(chosen.host.host, tuple(r.model for r in chosen.evict))
    on_disk = any(model in h.models_on_disk for h in hosts)
    return NoFit(_explain(model, need_text or format_bytes(need), hosts), on_disk=on_disk)


def _evictions(host: HostView, need: int) -> _Option | None:
    idle = sorted(
        (r for r in host.residents if not r.busy and not r.pinned and not r.stopping),
        key=lambda r: (r.last_used, r.model),
    )
    option = _Option(host)
    for resident in idle:
        option.evict.append(resident)
        if _free_after(host, option.evict) >= need:
            return option
    return None


def _free_after(host: HostView, evicted: Iterable[Resident]) -> int:
    gone = {r.model for r in evicted}
    rest = tuple(r for r in host.residents if r.model not in gone)
    freed_rss = sum(r.rss for r in host.residents if r.model in gone)
    return replace(host, available=host.available + freed_rss, residents=rest).free


def _reverse(name: str) -> tuple[int, ...]:
    # max() with a name tie-break that still prefers the alphabetically first host.
    return tuple(-ord(c) for c in name)


def _explain(model: str, need_text: str, hosts: Sequence[HostView]) -> str:
    if not hosts:
        return f"model {model!r} needs {need_text}, and no host is alive"
    lines = [_host_line(model, h) for h in sorted(hosts, key=lambda h: h.host)]
    return f"model {model!r} needs {need_text}; no host can fit it: " + "; ".join(lines)


def _host_line(model: str, host: HostView) -> str:
    if model not in host.models_on_disk:
        return f"{host.host}: does not have it on disk"
    if model in host.unavailable:
        return f"{host.host}: cannot run it ({host.unavailable[model]})"
    if model in host.crashing:
        return f"{host.host}: its worker keeps crashing there"
    placed = ", ".join(f"{r.model} {format_bytes(r.bytes)} ({_state(r)})" for r in host.residents)
    return f"{host.host}: {format_bytes(host.free)} free of {format_bytes(host.capacity)}" + (
        f", holding {placed}" if placed else ""
    )


def _state(resident: Resident) -> str:
    if resident.stopping:
        return "stopping"
    return "pinned" if resident.pinned else "busy" if resident.busy else "idle"


def fits_once_settled(model: str, need: int, hosts: Sequence[HostView]) -> bool:
    """Whether the model would fit once stopping workers have exited; then its jobs wait a
    moment instead of failing for lack of capacity."""
    if not any(r.stopping for h in hosts for r in h.residents):
        return False
    return isinstance(choose_host(model, need, [h.settled() for h in hosts]), Placement)


def idle_for(resident: Resident, now: float) -> float:
    return now - resident.last_used


def keep_alive_expired(resident: Resident, keep_alive_s: float, now: float) -> bool:
    """An idle, unpinned model past its keep_alive (-1: never) is unloaded; a worker that never
    managed to load counts too, so a failed load does not hold its reservation forever."""
    if keep_alive_s < 0 or resident.busy or resident.pinned:
        return False
    return idle_for(resident, now) >= keep_alive_s
