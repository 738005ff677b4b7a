"""What hosts and workers say about themselves: heartbeats stored in Redis with a TTL."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

WorkerState = Literal["starting", "loading", "idle", "busy", "stopping"]


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


class WorkerReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: str
    host: str
    pid: int
    state: WorkerState
    cpu_percent: float
    rss_bytes: int
    current_job: str | None = None
    loaded: bool = False
    load_params: dict[str, object] | None = None
    jobs_done: int = 0
    updated_at: float = Field(description="Unix time of this heartbeat.")


class HostReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    pid: int
    models_dir: str
    models: list[ModelInfo]
    ram_total_bytes: int
    ram_available_bytes: int
    updated_at: float


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
