"""Splitting a GGUF model between one GPU and host memory by n_gpu_layers, on the tiny model's
real file (test_offload_e2e.py: the same on SmolLM2 and Gemma 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostler.schemas import LoadParams
from hostler.worker.memory.estimate import WORKER_BASE_BYTES, estimate_gguf, worker_need
from hostler.worker.memory.gguf import read_gguf
from hostler.worker.memory.offload import CUDA_RUNTIME_BYTES, gpu_split, offloaded_layers
from make_tiny_gguf import N_LAYER
from model_infos import info_of


def check_split_adds_up(path: Path) -> None:
    """The per-layer sizes cover every tensor once; offloading all layers moves every one of
    them but the input layer, and host memory loses exactly what the GPU gains."""
    tensors = read_gguf(path).tensors
    whole = sum(t.n_bytes for t in tensors)
    cpu = estimate_gguf(path, LoadParams(n_ctx=512, n_parallel=2))
    facts = cpu.offload
    assert facts is not None and cpu.gpu is None and cpu.vram_bytes == 0
    tied = not any(t.name == "output.weight" for t in tensors)
    embeddings = next(t.n_bytes for t in tensors if t.name == "token_embd.weight")
    assert facts.tied_output_bytes == (embeddings if tied else 0)
    assert sum(facts.layer_bytes) + facts.output_bytes + facts.input_bytes == whole
    assert all(size > 0 for size in facts.layer_bytes)

    n_layer = len(facts.layer_bytes)
    full = estimate_gguf(path, LoadParams(n_ctx=512, n_parallel=2, n_gpu_layers=-1))
    assert full.gpu is not None and full.gpu.layers == n_layer + 1
    assert full.gpu.weights_bytes == whole - facts.input_bytes + facts.tied_output_bytes
    assert full.gpu.kv_cache_bytes == cpu.kv_cache_bytes and full.kv_cache_bytes == 0
    assert full.vram_bytes == full.gpu.total_bytes > full.gpu.weights_bytes + CUDA_RUNTIME_BYTES
    # Host memory keeps what it held less every offloaded tensor: the input layer, and the
    # mapped span's double count of repacked tensors inside it (estimate.py) stays as it was.
    assert full.weights_bytes == max(0, cpu.weights_bytes - (whole - facts.input_bytes))
    assert full.compute_bytes == cpu.compute_bytes and full.overhead_bytes == cpu.overhead_bytes
    assert full.kv_bytes_per_cell == cpu.kv_bytes_per_cell  # a resize still counts every layer

    # Layer by layer: each step moves that layer's weights and KV cache off the host.
    previous = estimate_gguf(path, LoadParams(n_ctx=512, n_parallel=2, n_gpu_layers=1))
    assert previous.gpu is not None
    assert previous.gpu.weights_bytes == facts.output_bytes + facts.tied_output_bytes
    for k in range(2, n_layer + 2):
        now = estimate_gguf(path, LoadParams(n_ctx=512, n_parallel=2, n_gpu_layers=k))
        assert now.gpu is not None and previous.gpu is not None
        layer = n_layer + 1 - k
        assert now.gpu.weights_bytes - previous.gpu.weights_bytes == facts.layer_bytes[layer]
        kv_layer = 256 * 2 * 2 * facts.layer_kv_bytes_per_cell[layer]
        assert now.gpu.kv_cache_bytes - previous.gpu.kv_cache_bytes == kv_layer
        assert previous.kv_cache_bytes - now.kv_cache_bytes == kv_layer
        assert previous.weights_bytes - now.weights_bytes == min(previous.weights_bytes, facts.layer_bytes[layer])
        previous = now
    assert previous == full


def test_tiny_model_split_adds_up_to_the_whole(model_files: dict[str, Path]) -> None:
    check_split_adds_up(model_files["tiny"])


def test_llama_cpp_offloads_the_output_layer_first_then_the_last_layers() -> None:
    assert list(offloaded_layers(4, 0)) == []
    assert list(offloaded_layers(4, 1)) == []  # the output layer only
    assert list(offloaded_layers(4, 2)) == [3]
    assert list(offloaded_layers(4, 5)) == [0, 1, 2, 3]
    assert list(offloaded_layers(4, 99)) == [0, 1, 2, 3]
    assert list(offloaded_layers(4, -1)) == [0, 1, 2, 3]


def test_the_gpu_part_grows_with_the_context(model_files: dict[str, Path]) -> None:
    facts = estimate_gguf(model_files["tiny"], LoadParams()).offload
    assert facts is not None
    small = gpu_split(facts, LoadParams(n_ctx=1024, n_gpu_layers=-1))
    large = gpu_split(facts, LoadParams(n_ctx=4096, n_gpu_layers=-1))
    assert large.kv_cache_bytes == 4 * small.kv_cache_bytes
    assert large.weights_bytes == small.weights_bytes
    assert large.compute_bytes >= small.compute_bytes
    # Attention scores of a whole context per micro-batch only without flash attention.
    unflashed = gpu_split(facts, LoadParams(n_ctx=4096, n_gpu_layers=-1, flash_attn=False))
    assert unflashed.compute_bytes > large.compute_bytes


@pytest.mark.parametrize("reported_layers", [0, 3, -1])
@pytest.mark.parametrize("wanted_layers", [0, 2, -1])
def test_placement_recomputes_the_split_for_a_spec_from_the_report_alone(
    model_files: dict[str, Path], reported_layers: int, wanted_layers: int
) -> None:
    path = model_files["tiny"]
    info = info_of(path, LoadParams(n_ctx=1024, n_gpu_layers=reported_layers))
    wanted = LoadParams(n_ctx=4096, n_gpu_layers=wanted_layers)
    need = worker_need(info, wanted)
    direct = estimate_gguf(path, wanted)
    assert need.ram == direct.total_bytes + WORKER_BASE_BYTES
    assert need.vram == direct.vram_bytes
    all_cpu = estimate_gguf(path, wanted.model_copy(update={"n_gpu_layers": 0}))
    assert need.ram_without_gpu == all_cpu.total_bytes + WORKER_BASE_BYTES
    if wanted_layers:
        assert "on one GPU" in need.text and f"{N_LAYER + 1 if wanted_layers < 0 else 2} layers" in need.text
    else:
        assert need.vram == 0 and "GPU" not in need.text
