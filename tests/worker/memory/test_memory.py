"""Memory estimates from model files, on hand-made files (test_memory_e2e.py: against real RSS on Gemma 3)."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import pytest
from hostler.schemas import LoadParams
from hostler.worker.memory.estimate import EstimateError, MemoryEstimate, estimate, estimate_gguf, estimate_mlx
from make_tiny_gguf import N_EMBD, N_HEAD, N_HEAD_KV, N_LAYER

MiB = 1024**2


def test_every_slot_gets_a_kv_cache_of_n_ctx(model_files: dict[str, Path]) -> None:
    one = estimate_gguf(model_files["tiny"], LoadParams(n_ctx=512, n_parallel=1))
    four = estimate_gguf(model_files["tiny"], LoadParams(n_ctx=512, n_parallel=4))
    assert four.kv_cache_bytes == 4 * one.kv_cache_bytes
    assert four.weights_bytes == one.weights_bytes
    # A spec with another n_ctx resizes the cache of every slot.
    assert four.kv_bytes_per_cell == 4 * one.kv_bytes_per_cell


def test_kv_cache_grows_linearly_with_n_ctx(model_files: dict[str, Path]) -> None:
    sizes = {
        n: estimate_gguf(model_files["tiny"], LoadParams(n_ctx=n, n_parallel=1)).kv_cache_bytes
        for n in (256, 512, 1024)
    }
    assert sizes[512] == 2 * sizes[256]
    assert sizes[1024] == 4 * sizes[256]
    head_dim = N_EMBD // N_HEAD
    # f16 K and V for every layer's KV heads, for every cell.
    assert sizes[256] == 256 * N_LAYER * N_HEAD_KV * 2 * head_dim * 2


def test_kv_cache_is_padded_to_whole_blocks_of_cells(model_files: dict[str, Path]) -> None:
    # llama.cpp pads the context to a multiple of 256 cells.
    small = estimate_gguf(model_files["tiny"], LoadParams(n_ctx=100)).kv_cache_bytes
    assert small == estimate_gguf(model_files["tiny"], LoadParams(n_ctx=256)).kv_cache_bytes


def test_parts_are_positive_and_add_up(model_files: dict[str, Path]) -> None:
    found = estimate_gguf(model_files["tiny"], LoadParams())
    assert found.weights_bytes > 0
    assert found.kv_cache_bytes > 0
    assert found.compute_bytes > 0
    assert found.overhead_bytes > 0
    parts = found.weights_bytes + found.kv_cache_bytes + found.compute_bytes + found.overhead_bytes
    # Kept prompts default to as much host memory as the slots' KV cache.
    assert found.kept_prompts_bytes == found.kv_cache_bytes
    assert found.total_bytes == parts + found.kept_prompts_bytes
    fixed = estimate_gguf(model_files["tiny"], LoadParams(cache_ram_mib=3))
    assert fixed.kept_prompts_bytes == 3 * MiB and fixed.kv_bytes_per_cell == found.kv_bytes_per_cell // 2
    assert estimate_gguf(model_files["tiny"], LoadParams(cache_ram_mib=0)).total_bytes == parts
    # The tiny model's weights are float32: the whole file but its metadata.
    assert 0.8 * model_files["tiny"].stat().st_size < found.weights_bytes < model_files["tiny"].stat().st_size
    assert estimate(model_files["tiny"], "llama", LoadParams()) == found


def test_describe_names_every_part() -> None:
    found = MemoryEstimate(
        weights_bytes=241 * MiB, kv_cache_bytes=36 * MiB, compute_bytes=3 * MiB, overhead_bytes=50 * MiB
    )
    assert found.describe() == "330 MiB (weights 241 MiB + KV cache 36 MiB + compute 3 MiB + runtime 50 MiB)"
    kept = MemoryEstimate(
        weights_bytes=241 * MiB,
        kv_cache_bytes=36 * MiB,
        compute_bytes=3 * MiB,
        overhead_bytes=50 * MiB,
        kept_prompts_bytes=36 * MiB,
    )
    assert kept.describe().endswith("runtime 50 MiB + kept prompts 36 MiB)")


@pytest.mark.parametrize("name", ["broken", "truncated"])
def test_unreadable_gguf_raises_estimate_error_naming_the_file(model_files: dict[str, Path], name: str) -> None:
    with pytest.raises(EstimateError, match=f"{name}.gguf"):
        estimate_gguf(model_files[name], LoadParams())


def test_gguf_cut_inside_its_tensor_data_is_truncated(model_files: dict[str, Path], tmp_path: Path) -> None:
    data = model_files["tiny"].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(EstimateError, match=r"cut\.gguf: truncated"):
        estimate_gguf(cut, LoadParams())


@pytest.mark.parametrize("content", [b"", b"GGUF", b"GGUF\x03\x00\x00\x00" + b"\xff" * 16])
def test_short_or_corrupt_gguf_header(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(EstimateError, match=r"bad\.gguf"):
        estimate_gguf(path, LoadParams())


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(EstimateError, match=r"absent\.gguf"):
        estimate_gguf(tmp_path / "absent.gguf", LoadParams())


# -- MLX folders ---------------------------------------------------------------------------

MLX_CONFIG = {
    "num_hidden_layers": 4,
    "hidden_size": 64,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], int]]) -> int:
    """Writes a safetensors file of zeros by hand; returns the bytes of tensor data."""
    header: dict[str, object] = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for name, (dtype, shape, item) in tensors.items():
        size = item
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return offset


@pytest.fixture
def mlx_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mlx-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(MLX_CONFIG))
    write_safetensors(
        folder / "model.safetensors",
        {"model.embed_tokens.weight": ("F16", [1000, 64], 2), "model.norm.weight": ("F32", [64], 4)},
    )
    write_safetensors(folder / "model-2.safetensors", {"model.layers.0.mlp.up_proj.weight": ("BF16", [128, 64], 2)})
    return folder


def test_mlx_estimate_from_config_and_safetensors_headers(mlx_folder: Path) -> None:
    found = estimate_mlx(mlx_folder, LoadParams(n_ctx=1024, n_parallel=1))
    assert found.weights_bytes == 1000 * 64 * 2 + 64 * 4 + 128 * 64 * 2
    head_dim = 64 // 8
    assert found.kv_cache_bytes == 2 * 4 * 2 * head_dim * 1024 * 2
    assert found.compute_bytes > 0 and found.overhead_bytes > 0
    assert estimate(mlx_folder, "mlx", LoadParams(n_ctx=1024, n_parallel=1)) == found
    assert estimate_mlx(mlx_folder, LoadParams(n_ctx=2048, n_parallel=1)).kv_cache_bytes == 2 * found.kv_cache_bytes
    assert estimate_mlx(mlx_folder, LoadParams(n_ctx=1024, n_parallel=4)).kv_cache_bytes == 4 * found.kv_cache_bytes


def test_mlx_missing_config(mlx_folder: Path) -> None:
    (mlx_folder / "config.json").unlink()
    with pytest.raises(EstimateError, match="config.json"):
        estimate_mlx(mlx_folder, LoadParams())


def test_mlx_without_safetensors(mlx_folder: Path) -> None:
    for shard in mlx_folder.glob("*.safetensors"):
        shard.unlink()
    with pytest.raises(EstimateError, match="safetensors"):
        estimate_mlx(mlx_folder, LoadParams())


def raw_safetensors(header: Mapping[str, object], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


ONE_F16 = {"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    "content",
    [
        b"\x01\x02",
        struct.pack("<Q", 10**12) + b"{}",
        struct.pack("<Q", 8) + b"not json",
        raw_safetensors(ONE_F16, bytes(4)),
        raw_safetensors({"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 7]}}, bytes(8)),
        raw_safetensors({"w": {"dtype": "F16", "shape": "four"}}, bytes(8)),
    ],
    ids=["short", "huge-header", "not-json", "truncated-data", "offsets-mismatch", "bad-entry"],
)
def test_mlx_malformed_safetensors_names_the_file(mlx_folder: Path, content: bytes) -> None:
    (mlx_folder / "model-2.safetensors").write_bytes(content)
    with pytest.raises(EstimateError, match=r"model-2\.safetensors"):
        estimate_mlx(mlx_folder, LoadParams())
