"""What hosts and workers say about themselves (heartbeats with a TTL), and the controller's
desired state: which model is placed on which host, and what a model was asked for."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ._params import LoadParams

WorkerState = Literal["starting", "loading", "idle", "busy", "stopping"]
PlacementPolicy = Literal["most-free", "best-fit"]
# keep_alive of a model: seconds without jobs before it is unloaded; -1 keeps it loaded.
DEFAULT_KEEP_ALIVE_S = 300.0


class GpuOffload(BaseModel):
    """A GGUF model's sizes by llama.cpp layer, so placement can split it between one GPU and
    host memory for any n_gpu_layers and n_ctx without the file (`memory.offload`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layer_bytes: list[int] = Field(description="Weights of each repeating layer (blk.N.*), in layer order.")
    layer_kv_bytes_per_cell: list[int] = Field(description="KV cache of each layer per context cell of one slot.")
    output_bytes: int = Field(ge=0, description="The output layer's own tensors: its norm and matrix.")
    tied_output_bytes: int = Field(
        0, ge=0, description="Without an output matrix, the copy of token_embd the output layer's device gets."
    )
    input_bytes: int = Field(ge=0, description="What stays on the CPU whatever is offloaded: token_embd and the rest.")
    n_vocab: int = Field(ge=0)
    n_embd: int = Field(ge=0)
    n_head: int = Field(ge=0, description="The most attention heads of any layer.")
    n_ff: int = Field(ge=0, description="The widest feed-forward layer.")


class ModelInfo(BaseModel):
    """One model on one host's disk."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    engine: Literal["llama", "mlx"]
    path: str = Field(description="The weights file or folder on the host.")
    size_bytes: int = Field(ge=0)
    host: str = Field(description="The host that has it on disk.")
    chat_template: bool = Field(description="Whether chat() can be used with it.")
    loaded: bool = Field(False, description="A live worker has it in memory.")
    estimate_bytes: int | None = Field(
        None, description="Memory a load with the model's default params takes (None: the files could not be read)."
    )
    estimate: str | None = Field(None, description="The estimate's parts, for a person.")
    estimate_n_ctx: int | None = Field(None, description="The context length the estimate is for.")
    kv_bytes_per_cell: int | None = Field(None, description="KV cache per context cell, to rescale to another n_ctx.")
    estimate_params: LoadParams | None = Field(None, description="The load params the estimate is for.")
    vram_estimate_bytes: int | None = Field(
        None, description="GPU memory the estimate's load takes on one GPU (0: nothing offloaded)."
    )
    offload: GpuOffload | None = Field(None, description="Sizes by layer, to split it between GPU and RAM.")
    fits_on: list[str] = Field(default_factory=list, description="Live hosts with enough free memory for it now.")
    available: bool = Field(True, description="Whether this host can run the model's engine.")
    unavailable_reason: str | None = Field(
        None, description="Why this host cannot run it (its engine's library is missing), for a person."
    )


class GpuInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    driver: str | None = Field(None, description="The NVIDIA driver version (None: not known).")


class HardwareReport(BaseModel):
    """What a host is made of: CPU, memory, GPUs, and the engines it can run (`hostler hardware`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    os: str = Field(description="Operating system (Linux, Darwin).")
    arch: str = Field(description="Machine architecture (x86_64, arm64, aarch64).")
    cpu_model: str
    cores_physical: int | None = Field(None, ge=1, description="Physical cores (None: not known).")
    cores_logical: int = Field(ge=1)
    instruction_sets: list[str] = Field(
        default_factory=list, description="The CPU features llama.cpp's CPU backend uses (AVX2, AVX512, NEON, ...)."
    )
    ram_total_bytes: int = Field(ge=0)
    ram_available_bytes: int = Field(ge=0)
    gpus: list[GpuInfo] = Field(default_factory=list)
    engines: dict[str, str | None] = Field(
        default_factory=dict, description="Engine -> None when this host can run it, else why not."
    )

    def summary(self) -> str:
        """One line for a person: CPU, cores, instruction sets, engines."""
        cores = f"{self.cores_physical}/{self.cores_logical}" if self.cores_physical else f"{self.cores_logical}"
        runs = [name for name, why in sorted(self.engines.items()) if why is None]
        lacks = [name for name, why in sorted(self.engines.items()) if why is not None]
        engines = ", ".join(runs) or "none"
        if lacks:
            engines += f" (not {', '.join(lacks)})"
        features = " ".join(self.instruction_sets) or "-"
        return f"{self.cpu_model}, {cores} cores, {features}; engines: {engines}"


class HostWorker(BaseModel):
    """A worker process as its host agent sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    pid: int
    rss_bytes: int
    stopping: bool = False


class WorkerReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: str
    host: str
    pid: int
    state: WorkerState
    cpu_percent: float
    rss_bytes: int
    current_job: str | None = Field(None, description="The longest-running job in flight (None: idle).")
    running_jobs: list[str] = Field(default_factory=list, description="Every job in flight, oldest first.")
    slots: int = Field(1, description="Jobs the loaded engine runs at once (continuous batching).")
    prompt_tokens_received: int = Field(0, description="Prompt tokens of the generations this process ran.")
    prompt_tokens_evaluated: int = Field(
        0, description="Of those, the tokens evaluated; the rest came from the prompt cache."
    )
    loaded: bool = False
    load_params: dict[str, object] | None = None
    jobs_done: int = 0
    loads: int = Field(0, description="Times this process loaded the model.")
    last_job_at: float | None = Field(None, description="Unix time the last job ended (None: none yet).")
    started_at: float = 0.0
    mean_job_s: float | None = Field(None, description="Moving average of job run time (for retry-after hints).")
    updated_at: float = Field(description="Unix time of this heartbeat.")


class _HostFigures(BaseModel):
    """What a host says of itself apart from its catalog: the figures that change as it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    pid: int
    models_dir: str
    ram_total_bytes: int
    ram_available_bytes: int
    memory_limit_bytes: int | None = Field(None, description="--max-memory: the most this host offers.")
    gpus: list[GpuInfo] = Field(default_factory=list)
    workers: list[HostWorker] = Field(default_factory=list)
    crashing: dict[str, str] = Field(
        default_factory=dict, description="Models whose worker kept crashing here, with the last reason."
    )
    updated_at: float

    @property
    def capacity_bytes(self) -> int:
        """What this host offers to models in all."""
        if self.memory_limit_bytes is None:
            return self.ram_total_bytes
        return min(self.memory_limit_bytes, self.ram_total_bytes)


class HostReport(_HostFigures):
    """A host as every reader uses it: its state and its catalog joined (`schemas._hosts`)."""

    models: list[ModelInfo]
    hardware: HardwareReport | None = Field(None, description="CPU, RAM, GPUs and engines (probed at agent start).")


class HostState(_HostFigures):
    """The part of a host's report written every heartbeat (`hostler:host:<id>`): a few hundred
    bytes, where the catalog it names is kilobytes and changes only with the models on disk."""

    catalog: str = Field(description="The digest of the host's catalog (`HostCatalog.digest`).")


class HostCatalog(BaseModel):
    """The part of a host's report that rarely changes (`hostler:host-catalog:<id>`), written
    only when its digest changes. Its hardware's live figures (available RAM, GPUs) are left
    out: they change every heartbeat, and the state carries them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    digest: str = Field(description="The first 16 hex digits of the SHA-256 of models and hardware as JSON.")
    models: list[ModelInfo]
    hardware: HardwareReport | None = None


def free_memory(capacity: int, available: int, held: int, not_yet_taken: int = 0) -> int:
    """What a host can still give another model: its capacity less what placed models hold,
    and no more than the RAM the OS has free less the part of their reservations the workers
    have not taken yet (the OS's figure already lacks what they took). Negative when over."""
    return min(capacity - held, available - not_yet_taken)


class Assignment(BaseModel):
    """Desired state: one worker of `model` should run on `host`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    host: str
    estimate_bytes: int = Field(ge=0, description="Reserved on the host until the worker reports loaded.")
    gpu: int | None = Field(None, description="The GPU (NVML index) the worker may use; None: host memory only.")
    vram_bytes: int = Field(0, ge=0, description="Reserved on that GPU.")
    placed_at: float
    reason: str = Field(description="Why it was placed: jobs waiting, load, replicas, autoscale.")


class ModelSpec(BaseModel):
    """What `client.load` asked for a model; the controller keeps it true."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    replicas: int = Field(1, ge=1, le=64, description="Workers to keep, each on its own host.")
    keep_alive_s: float = Field(DEFAULT_KEEP_ALIVE_S, ge=-1, description="Idle seconds before unload; -1 never.")
    pinned: bool = Field(False, description="Never evicted to make room for another model.")
    params: LoadParams = Field(default_factory=LoadParams)


class WorkerStatus(BaseModel):
    """One row of client.status(): a worker with its queue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    name: str
    host: str
    pid: int
    state: WorkerState
    cpu_percent: float
    rss_bytes: int
    queue_length: int
    current_job: str | None
    loaded: bool
    jobs_done: int
    running_jobs: list[str] = Field(default_factory=list, description="Every job in flight, oldest first.")
    slots: int = Field(1, description="Jobs the loaded engine runs at once.")
    prompt_tokens_received: int = 0
    prompt_tokens_evaluated: int = Field(0, description="Prompt tokens evaluated; the rest came from the cache.")


class HostStatus(BaseModel):
    """One host in client.status(): its memory and what is placed on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    ram_total_bytes: int
    ram_available_bytes: int
    memory_limit_bytes: int | None
    free_bytes: int = Field(description="What the controller can still place here.")
    gpus: list[GpuInfo]
    gpu_free_bytes: dict[int, int] = Field(
        default_factory=dict,
        description="What the controller can still place on each GPU, by index: its free VRAM less the "
        "reservations of workers not loaded yet (without a controller, the free VRAM the host reports).",
    )
    models_on_disk: list[str]
    placed: dict[str, int] = Field(description="Placed models and the memory each holds (RSS, or the reservation).")
    workers: list[HostWorker]
    crashing: dict[str, str]
    hardware: HardwareReport | None = None

    @classmethod
    def of(
        cls, report: HostReport, *, free_bytes: int, placed: dict[str, int], gpu_free: dict[int, int] | None = None
    ) -> HostStatus:
        """A host's report with what the controller (or, without one, the reader) counts as free.

        Built without validating again what the report's own validation checked: the controller
        builds one per host for its view, a thousand of them every couple of seconds."""
        return cls.model_construct(
            host=report.host,
            ram_total_bytes=report.ram_total_bytes,
            ram_available_bytes=report.ram_available_bytes,
            memory_limit_bytes=report.memory_limit_bytes,
            free_bytes=free_bytes,
            gpus=report.gpus,
            gpu_free_bytes=gpu_free if gpu_free is not None else {g.index: g.free_bytes for g in report.gpus},
            models_on_disk=sorted(m.id for m in report.models),
            placed=placed,
            workers=report.workers,
            crashing=report.crashing,
            hardware=report.hardware,
        )


class Status(BaseModel):
    """client.status(): hosts, placements, workers and queue lengths in one picture."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    controller: str | None = Field(description="The leading controller's id (None: no controller runs).")
    hosts: list[HostStatus]
    placements: list[Assignment]
    workers: list[WorkerStatus]
    queues: dict[str, int] = Field(description="Waiting jobs per model.")
