"""Placement policy: which host gets a model, what to evict for it, or why nothing fits.

Pure functions over a snapshot of the cluster; the controller does the reading and writing.

A model that offloads layers (n_gpu_layers) needs host memory and memory on ONE GPU: a
worker is pinned to a single GPU (the host agent sets CUDA_VISIBLE_DEVICES), never split
across several, so one GPU must have room for the whole offload. A host whose report lists
no GPU counts the whole model in host memory (llama.cpp runs it on the CPU there, or in
Apple silicon's unified memory) and needs `ram_without_gpu`.
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
    gpu: int | None = None  # the GPU it reserves memory on
    vram: int = 0  # reserved there
    loaded: bool = False  # its worker has loaded: the GPU's free figure already lacks it


@dataclass(frozen=True)
class GpuView:
    index: int
    total: int
    free: int  # what NVML reports free now; loaded workers are already out of it


@dataclass(frozen=True)
class Demand:
    """What a new worker needs: `ram` and `vram` on one GPU of a host with GPUs, or
    `ram_without_gpu` (every layer in host memory) on a host without."""

    ram: int
    vram: int = 0
    ram_without_gpu: int | None = None

    def ram_on(self, host: HostView) -> int:
        if self.vram and not host.gpus:
            return self.ram if self.ram_without_gpu is None else self.ram_without_gpu
        return self.ram


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
    gpus: tuple[GpuView, ...] = ()

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

    def gpu_free(self, gpu: GpuView) -> int:
        """What the GPU can still give: its total less what placed models reserve on it, and
        no more than NVML's free figure less the reservations of workers not yet loaded."""
        mine = [r for r in self.residents if r.gpu == gpu.index and not r.stopping]
        held = sum(r.vram for r in mine)
        pending = sum(r.vram for r in mine if not r.loaded)
        return max(0, min(gpu.total - held, gpu.free - pending))

    def gpu_for(self, vram: int, policy: PlacementPolicy) -> GpuView | None:
        """The GPU a worker needing `vram` goes to: most free, or least left over (best-fit)."""
        fitting = [(self.gpu_free(g), g) for g in self.gpus if self.gpu_free(g) >= vram]
        if not fitting:
            return None
        if policy == "best-fit":
            return min(fitting, key=lambda f: (f[0], f[1].index))[1]
        return max(fitting, key=lambda f: (f[0], -f[1].index))[1]

    def fits(self, demand: Demand, policy: PlacementPolicy = "most-free") -> bool:
        if self.free < demand.ram_on(self):
            return False
        return not (demand.vram and self.gpus) or self.gpu_for(demand.vram, policy) is not None

    def without(self, gone: Iterable[Resident]) -> HostView:
        """This host once `gone` have been evicted: their RAM and VRAM come back."""
        names = {r.model for r in gone}
        out = [r for r in self.residents if r.model in names]
        rest = tuple(r for r in self.residents if r.model not in names)
        gpus = tuple(
            replace(g, free=g.free + sum(r.vram for r in out if r.gpu == g.index and r.loaded)) for g in self.gpus
        )
        return replace(self, available=self.available + sum(r.rss for r in out), residents=rest, gpus=gpus)

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
    gpu: int | None = None  # the GPU the worker reserves memory on


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
    need: int | Demand,
    hosts: Sequence[HostView],
    policy: PlacementPolicy = "most-free",
    *,
    need_text: str | None = None,
) -> Placement | NoFit:
    """Where a new worker of `model` goes (needing `need` bytes of RAM, or a Demand with VRAM);
    a host running one is skipped."""
    demand = need if isinstance(need, Demand) else Demand(need)
    candidates = [h for h in hosts if h.can_run(model) and not h.has(model)]
    fitting = [h for h in candidates if h.fits(demand, policy)]
    if fitting:
        if policy == "best-fit":
            best = min(fitting, key=lambda h: (h.free - demand.ram_on(h), h.host))
        else:
            best = max(fitting, key=lambda h: (h.free, _reverse(h.host)))
        return Placement(best.host, gpu=_gpu_of(best, demand, policy))
    options = [o for h in candidates if (o := _evictions(h, demand, policy)) is not None]
    if options:
        # Least recently used first: the option whose newest victim is oldest wins.
        chosen = min(options, key=lambda o: (max(r.last_used for r in o.evict), len(o.evict), o.host.host))
        after = chosen.host.without(chosen.evict)
        return Placement(chosen.host.host, tuple(r.model for r in chosen.evict), _gpu_of(after, demand, policy))
    on_disk = any(model in h.models_on_disk for h in hosts)
    text = need_text or format_bytes(demand.ram) + (
        f" of RAM + {format_bytes(demand.vram)} on one GPU" if demand.vram else ""
    )
    return NoFit(_explain(model, text, hosts, demand), on_disk=on_disk)


def _gpu_of(host: HostView, demand: Demand, policy: PlacementPolicy) -> int | None:
    if not (demand.vram and host.gpus):
        return None
    gpu = host.gpu_for(demand.vram, policy)
    return gpu.index if gpu is not None else None


def _evictions(host: HostView, demand: Demand, policy: PlacementPolicy) -> _Option | None:
    idle = sorted(
        (r for r in host.residents if not r.busy and not r.pinned and not r.stopping),
        key=lambda r: (r.last_used, r.model),
    )
    option = _Option(host)
    for resident in idle:
        option.evict.append(resident)
        if host.without(option.evict).fits(demand, policy):
            return option
    return None


def _reverse(name: str) -> tuple[int, ...]:
    # max() with a name tie-break that still prefers the alphabetically first host.
    return tuple(-ord(c) for c in name)


def _explain(model: str, need_text: str, hosts: Sequence[HostView], demand: Demand) -> str:
    if not hosts:
        return f"model {model!r} needs {need_text}, and no host is alive"
    lines = [_host_line(model, h, demand) for h in sorted(hosts, key=lambda h: h.host)]
    return f"model {model!r} needs {need_text}; no host can fit it: " + "; ".join(lines)


def _host_line(model: str, host: HostView, demand: Demand) -> str:
    if model not in host.models_on_disk:
        return f"{host.host}: does not have it on disk"
    if model in host.unavailable:
        return f"{host.host}: cannot run it ({host.unavailable[model]})"
    if model in host.crashing:
        return f"{host.host}: its worker keeps crashing there"
    placed = ", ".join(f"{r.model} {format_bytes(r.bytes)} ({_state(r)})" for r in host.residents)
    line = f"{host.host}: {format_bytes(host.free)} free of {format_bytes(host.capacity)}" + (
        f", holding {placed}" if placed else ""
    )
    if demand.vram and not host.gpus:
        line += f" (no GPU: it would need {format_bytes(demand.ram_on(host))} of RAM there)"
    elif demand.vram:
        line += "; " + ", ".join(
            f"GPU {g.index}: {format_bytes(host.gpu_free(g))} free of {format_bytes(g.total)}" for g in host.gpus
        )
    return line


def _state(resident: Resident) -> str:
    if resident.stopping:
        return "stopping"
    return "pinned" if resident.pinned else "busy" if resident.busy else "idle"


def fits_once_settled(model: str, need: int | Demand, hosts: Sequence[HostView]) -> bool:
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
