"""Placement by VRAM with real host agents whose reports carry GPUs (a stand-in NVML in the
agent's process, tests/nvml_standin.py), a real controller and real workers on the tiny model.

llama.cpp here is a CPU build: it runs the offloaded layers on the CPU, so these tests check
what placement decides and reserves, and that the worker is started on the chosen GPU only.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
from cluster import Cluster, workers_of
from hostler import NoCapacity
from hostler.schemas import LoadParams
from hostler.worker.memory.estimate import Need, worker_need
from model_infos import info_of
from nvml_standin import install

pytestmark = pytest.mark.e2e

GIB = 1024**3
FULL = LoadParams(n_gpu_layers=-1)


def need_of(path: Path) -> Need:
    """What the controller reserves for one worker of the model with every layer offloaded."""
    return worker_need(info_of(path, LoadParams()), FULL)


def models(tmp_path: Path, tiny: Path, *ids: str) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    for model_id in ids:
        (folder / f"{model_id}.gguf").symlink_to(tiny)
    return folder


def gpu_env(pid: int) -> tuple[str | None, str | None]:
    env = psutil.Process(pid).environ()
    return env.get("CUDA_VISIBLE_DEVICES"), env.get("CUDA_DEVICE_ORDER")


def test_a_full_offload_goes_to_the_gpu_with_room_and_its_worker_sees_only_that_gpu(
    cluster: Cluster, tmp_path: Path, model_files: dict[str, Path]
) -> None:
    tiny = model_files["tiny"]
    need = need_of(tiny)
    assert need.vram > 0
    # GPU 0 has half of what the offload needs free, GPU 1 one and a half times it.
    env = install(tmp_path / "nvml", [(2 * need.vram, need.vram // 2), (2 * need.vram, 3 * need.vram // 2)])
    cluster.host("gpu-host", models(tmp_path, tiny, "tiny"), 8 * GIB, env=env)
    cluster.controller()
    cluster.client.load("tiny", n_gpu_layers=-1)
    (placed,) = cluster.placements("tiny")
    assert (placed.host, placed.gpu, placed.vram_bytes, placed.estimate_bytes) == ("gpu-host", 1, need.vram, need.ram)
    (worker,) = [w for w in workers_of(cluster.url) if "tiny" in w.cmdline()]
    assert gpu_env(worker.pid) == ("1", "PCI_BUS_ID")
    assert cluster.client.complete("tiny", "Hello", max_tokens=4, temperature=0).usage.completion_tokens > 0


def test_a_full_offload_no_gpu_has_room_for_is_no_capacity_with_the_numbers(
    cluster: Cluster, tmp_path: Path, model_files: dict[str, Path]
) -> None:
    tiny = model_files["tiny"]
    need = need_of(tiny)
    env = install(tmp_path / "nvml", [(4 * need.vram, need.vram // 2)])
    cluster.host("gpu-host", models(tmp_path, tiny, "tiny"), 8 * GIB, env=env)
    cluster.controller()
    with pytest.raises(NoCapacity) as refused:
        cluster.client.load("tiny", n_gpu_layers=-1)
    message = str(refused.value)
    assert "on one GPU" in message and "gpu-host:" in message
    assert "GPU 0: " in message and " free of " in message
    assert not cluster.placements("tiny")
    # Nothing offloaded, nothing asked of the GPU: the same host takes it.
    cluster.client.load("tiny", n_gpu_layers=0)
    (placed,) = cluster.placements("tiny")
    assert (placed.gpu, placed.vram_bytes) == (None, 0)


def test_a_gpu_reservation_holds_until_its_worker_has_loaded_and_after(
    cluster: Cluster, tmp_path: Path, model_files: dict[str, Path]
) -> None:
    tiny = model_files["tiny"]
    need = need_of(tiny)
    # Room on the GPU for one offload and a half; host memory for many.
    size = 3 * need.vram // 2
    env = install(tmp_path / "nvml", [(size, size)])
    cluster.host("gpu-host", models(tmp_path, tiny, "tiny-a", "tiny-b"), 8 * GIB, env=env)
    cluster.controller()
    cluster.client.load("tiny-a", n_gpu_layers=-1, pinned=True)
    assert [(p.gpu, p.vram_bytes) for p in cluster.placements("tiny-a")] == [(0, need.vram)]
    # The stand-in's free figure never drops, so only the reservation keeps the second one out.
    with pytest.raises(NoCapacity, match="GPU 0: "):
        cluster.client.load("tiny-b", n_gpu_layers=-1)
    assert not cluster.placements("tiny-b")
    # `hostler status` tells the same: what is still placeable on the GPU is what the reservation left.
    deadline = time.monotonic() + 20
    while (left := _placeable(cluster, "gpu-host")) != {0: size - need.vram} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == {0: size - need.vram}


def _placeable(cluster: Cluster, host: str) -> dict[int, int]:
    status = cluster.client.status()
    return next(h.gpu_free_bytes for h in status.hosts if h.host == host) if status.controller else {}
