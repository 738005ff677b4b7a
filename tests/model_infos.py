"""A model as a host agent reports it (host_agent._info), built from its file, for tests of
placement that need a report's estimate without starting an agent."""

from __future__ import annotations

from pathlib import Path

from hostler.schemas import LoadParams, ModelInfo
from hostler.worker.memory.estimate import estimate_gguf

__all__ = ["info_of"]


def info_of(path: Path, params: LoadParams, *, model_id: str = "m", host: str = "h") -> ModelInfo:
    found = estimate_gguf(path, params)
    return ModelInfo(
        id=model_id,
        engine="llama",
        path=str(path),
        size_bytes=path.stat().st_size,
        host=host,
        chat_template=False,
        estimate_bytes=found.total_bytes,
        estimate=found.describe(),
        estimate_n_ctx=params.n_ctx,
        kv_bytes_per_cell=found.kv_bytes_per_cell,
        estimate_params=params,
        vram_estimate_bytes=found.vram_bytes,
        offload=found.offload,
    )
