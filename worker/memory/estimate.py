"""How much memory a model will take, from its files alone, before it is loaded.

The estimate is what loading the model and running one generation on a short prompt add to
the resident set (RSS) of a worker process that has already imported its engine, on the CPU.
It counts what llama.cpp (as llama-cpp-python drives it) allocates *and touches*, because
untouched pages cost nothing: llama.cpp reserves a compute buffer for a whole batch of logits
(514 MiB for Gemma 3 270M at n_batch 512), but a generation only writes one row of it.

Left out: a long prompt touches more of the compute buffer, up to about
n_head * n_ctx * n_ubatch * 8 bytes of attention scores plus per-token activations (128 MiB
for Gemma 3 270M at n_ctx 8192; a 4000-token prompt measured 78 MiB more than a short one).
GPU offload (n_gpu_layers) moves weights and KV cache off the host and is not modelled.
"""

from __future__ import annotations

import json
import math
import mmap
import platform
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard

from hostler.schemas import LoadParams, format_bytes

__all__ = ["EstimateError", "MemoryEstimate", "estimate", "estimate_gguf", "estimate_mlx"]

MiB = 1024**2

# llama.cpp pads the context (and with it the KV cache) to a multiple of 256 cells.
KV_CELL_PAD = 256
KV_BYTES_PER_VALUE = 2  # f16 K and V, llama.cpp's default cache type
# Touched once by the first graph on a 1k-token model: the code pages of the CPU kernels,
# ggml's graph and scheduler contexts, llama-cpp-python's objects and chat formatter.
RUNTIME_BASE_BYTES = 3 * MiB
# llama.cpp holds every token string about four times (the GGUF array it parsed, which is
# freed but stays in the heap, id_to_token, the token_to_id hash map and the piece cache):
# 4 x 32-byte std::string plus a hash node, bucket, score and attributes. Measured 151-168
# bytes a token on SentencePiece vocabularies of 1k to 300k tokens.
VOCAB_TOKEN_BYTES = 160
# A BPE merge lives in the GGUF array and in the bpe_ranks hash map (a pair of strings).
MERGE_BYTES = 160
# Sampling a token fills one llama_token_data (12 bytes) per vocabulary entry, and
# llama-cpp-python keeps an id array (4 bytes) per entry for its candidates.
SAMPLER_TOKEN_BYTES = 16
LOGIT_BYTES = 4
# ggml's graph, scheduler and allocator bookkeeping, per graph node (tensor metadata, hash
# sets, backend ids), for the reserve graphs and the ones a generation builds.
GRAPH_NODE_BYTES = 1024
PAGE = 4096
# mlx-lm grows its KV cache in steps of 256 positions.
MLX_KV_STEP = 256
# What an MLX worker holds beyond a llama.cpp one before any model: mlx and mlx-lm, and the
# transformers tokenizer code a load imports. Measured 104 MiB against 75 MiB for the two
# workers on tiny models (Linux, mlx 0.32, mlx-lm 0.32, transformers 5.23).
MLX_RUNTIME_BYTES = 32 * MiB

Engine = Literal["llama", "mlx"]


class EstimateError(ValueError):
    """A model file that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    overhead_bytes: int  # runtime buffers not in the above: vocabulary, output/logits buffers, batch
    # KV cache per context cell, so a placement can rescale this estimate to another n_ctx.
    kv_bytes_per_cell: int = 0

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes + self.overhead_bytes

    def describe(self) -> str:
        return (
            f"{format_bytes(self.total_bytes)} (weights {format_bytes(self.weights_bytes)}"
            f" + KV cache {format_bytes(self.kv_cache_bytes)} + compute {format_bytes(self.compute_bytes)}"
            f" + runtime {format_bytes(self.overhead_bytes)})"
        )


def estimate(path: Path, engine: Engine, params: LoadParams) -> MemoryEstimate:
    if engine == "llama":
        return estimate_gguf(path, params)
    if engine == "mlx":
        return estimate_mlx(path, params)
    raise ValueError(f"unknown engine {engine!r} (llama or mlx)")


# -- GGUF ---------------------------------------------------------------------------


def estimate_gguf(path: Path, params: LoadParams) -> MemoryEstimate:
    info = _read_gguf(path)
    arch = info.meta.get("general.architecture")
    if not isinstance(arch, str):
        raise EstimateError(f"{path}: GGUF metadata has no general.architecture")

    n_ctx = params.n_ctx
    n_batch = min(params.n_batch, n_ctx)  # as LlamaEngine passes it
    n_vocab = info.lengths.get("tokenizer.ggml.tokens") or _int(info.meta.get(f"{arch}.vocab_size"))
    n_merges = info.lengths.get("tokenizer.ggml.merges", 0)

    weights = _resident_weight_bytes(info, _repacked_row_multiples())

    # LlamaEngine passes n_ctx through unclamped (beyond the trained context llama.cpp only
    # warns), and llama.cpp pads it. llama-cpp-python leaves llama.cpp's swa_full at its
    # default (true), so sliding-window layers get a full-size cache too: the load log says
    # "using full-size SWA cache" and sizes both caches at n_ctx cells.
    per_cell = _kv_bytes_per_cell(info.meta, arch)
    kv = kv_cells(n_ctx) * per_cell

    # Only the rows a generation writes: the last token's logits, plus graph bookkeeping.
    max_nodes = max(1024, 8 * len(info.tensors))
    compute = n_vocab * LOGIT_BYTES + max_nodes * GRAPH_NODE_BYTES

    # llama-cpp-python's llama_batch gives each of its n_batch slots a seq_id array of
    # n_ctx ints; malloc writes a header per allocation, so each slot costs at most a page.
    batch = n_batch * min(_pad(4 * n_ctx + 16, 16), PAGE)
    overhead = (
        RUNTIME_BASE_BYTES
        + n_vocab * (VOCAB_TOKEN_BYTES + LOGIT_BYTES + SAMPLER_TOKEN_BYTES)  # + the output buffer
        + n_merges * MERGE_BYTES
        + batch
    )
    return MemoryEstimate(weights, kv, compute, overhead, per_cell)


def kv_cells(n_ctx: int) -> int:
    """KV cache cells a context of n_ctx tokens gets (llama.cpp and mlx-lm both pad to 256)."""
    return _pad(n_ctx, KV_CELL_PAD)


def _kv_bytes_per_cell(meta: dict[str, object], arch: str) -> int:
    n_layer = _int(meta.get(f"{arch}.block_count"))
    n_embd = _int(meta.get(f"{arch}.embedding_length"))
    heads = _per_layer(meta.get(f"{arch}.attention.head_count"), n_layer)
    # Hybrid and recurrent models store head_count_kv per layer, 0 where a layer keeps a
    # recurrent state instead of a KV cache.
    kv_heads = _per_layer(
        meta.get(f"{arch}.attention.head_count_kv", meta.get(f"{arch}.attention.head_count")), n_layer
    )
    head_default = n_embd // max(heads) if heads and max(heads) > 0 else 0
    key_length = _int(meta.get(f"{arch}.attention.key_length")) or head_default
    value_length = _int(meta.get(f"{arch}.attention.value_length")) or head_default
    return sum(kv_heads) * (key_length + value_length) * KV_BYTES_PER_VALUE


def _resident_weight_bytes(info: _GGUFInfo, repacked: dict[str, int]) -> int:
    # Weights are mmap'd and prefetched. Tensors the CPU backend repacks for its matmul
    # kernels are copied into anonymous memory (the "CPU_REPACK model buffer"); llama.cpp
    # then unmaps the file outside the span of the tensors it still reads from the mapping,
    # so the mapped part is that span, and the repacked copies come on top.
    tied_output = not any(t.name == "output.weight" for t in info.tensors)
    copies = 0
    mapped_start, mapped_end = math.inf, 0
    for tensor in info.tensors:
        repack = _is_repacked(tensor, repacked)
        if tensor.name == "token_embd.weight":
            # Looked up by row, never repacked; a model without output.weight multiplies
            # by the same tensor again, and that use gets its own repacked copy.
            if tied_output and repack:
                copies += tensor.n_bytes
            repack = False
        if repack:
            copies += tensor.n_bytes
        else:
            mapped_start = min(mapped_start, tensor.offset)
            mapped_end = max(mapped_end, tensor.offset + tensor.n_bytes)
    mapped = int(mapped_end - mapped_start) if mapped_end else 0
    return mapped + copies


def _is_repacked(tensor: _Tensor, repacked: dict[str, int]) -> bool:
    multiple = repacked.get(tensor.type_name)
    if multiple is None or len(tensor.dims) < 2 or any(d != 1 for d in tensor.dims[2:]):
        return False
    return tensor.name.endswith(".weight") and tensor.dims[1] % multiple == 0


def _repacked_row_multiples() -> dict[str, int]:
    """The quant types ggml's CPU backend repacks on this machine, and the row multiple it needs."""
    machine = platform.machine().lower()
    flags = _cpu_flags()
    if machine in ("x86_64", "amd64"):
        # Flags unknown (not Linux): every x86-64 machine a model is served from has AVX2.
        if flags and "avx2" not in flags:
            return {}
        types = {"Q4_0": 8, "Q4_K": 8, "IQ4_NL": 8, "MXFP4": 8}
        if "avx512f" in flags:
            types["Q2_K"] = 8
        return types
    if machine in ("arm64", "aarch64"):
        if flags and "asimddp" not in flags:
            return {}
        return {"Q4_0": 4, "Q8_0": 4, "IQ4_NL": 4, "MXFP4": 4, "Q4_K": 8, "Q5_K": 8, "Q6_K": 8}
    return {}


def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


# -- reading a GGUF file --------------------------------------------------------------
#
# A small reader of the GGUF layout instead of gguf.GGUFReader: the reader builds a numpy
# view per array element, which takes 14 s on Gemma 3's 262k-token vocabulary, and the host
# agent estimates every model on its disk. Only the tensor type sizes come from gguf.

_GGUF_MAGIC = b"GGUF"
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_SMALL_ARRAY = 65536  # numeric arrays up to this length are kept (per-layer values)
_MAX_DIMS = 4


@dataclass(frozen=True)
class _Tensor:
    name: str
    dims: tuple[int, ...]
    type_name: str
    offset: int
    n_bytes: int


@dataclass
class _GGUFInfo:
    meta: dict[str, object] = field(default_factory=dict)
    lengths: dict[str, int] = field(default_factory=dict)  # element counts of every array
    tensors: list[_Tensor] = field(default_factory=list)


class _Truncated(Exception):
    pass


class _Cursor:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.pos = 0

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise _Truncated
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def u32(self) -> int:
        return int(self.unpack("<I")[0])

    def u64(self) -> int:
        return int(self.unpack("<Q")[0])

    def skip(self, size: int) -> None:
        if self.pos + size > len(self.data):
            raise _Truncated
        self.pos += size

    def string(self) -> str:
        size = self.u64()
        start = self.pos
        self.skip(size)
        return bytes(self.data[start : self.pos]).decode("utf-8", errors="replace")


def _read_gguf(path: Path) -> _GGUFInfo:
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
            if head != _GGUF_MAGIC:
                raise EstimateError(f"{path}: not a GGUF file (it starts with {head!r}, not {_GGUF_MAGIC!r})")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _parse_gguf(path, data)
    except OSError as exc:
        raise EstimateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except _Truncated:
        raise EstimateError(f"{path}: truncated GGUF file (it ends inside its header)") from None


def _parse_gguf(path: Path, data: mmap.mmap) -> _GGUFInfo:
    quant_sizes = _quant_sizes(path)
    cursor = _Cursor(data)
    cursor.skip(4)
    version = cursor.u32()
    if version not in (2, 3):
        raise EstimateError(f"{path}: unsupported GGUF version {version} (2 and 3 are read)")
    n_tensors, n_kv = cursor.u64(), cursor.u64()
    # Each entry takes at least 12 bytes: counts beyond the file are garbage, not a loop to run.
    if (n_tensors + n_kv) * 12 > len(data):
        raise EstimateError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} metadata entries)")
    info = _GGUFInfo()
    for _ in range(n_kv):
        key = cursor.string()
        value_type = cursor.u32()
        if value_type == _ARRAY:
            _read_array(path, cursor, key, info)
        else:
            info.meta[key] = _read_value(path, cursor, value_type)
    for _ in range(n_tensors):
        info.tensors.append(_read_tensor(path, cursor, quant_sizes))
    alignment = _int(info.meta.get("general.alignment")) or 32
    data_start = _pad(cursor.pos, alignment)
    end = max((t.offset + t.n_bytes for t in info.tensors), default=0)
    if data_start + end > len(data):
        raise EstimateError(f"{path}: truncated GGUF file ({len(data)} bytes, its tensors need {data_start + end})")
    return info


def _read_value(path: Path, cursor: _Cursor, value_type: int) -> object:
    if value_type == _STRING:
        return cursor.string()
    fmt = _SCALARS.get(value_type)
    if fmt is None:
        raise EstimateError(f"{path}: corrupt GGUF metadata (unknown value type {value_type})")
    return cursor.unpack("<" + fmt)[0]


def _read_array(path: Path, cursor: _Cursor, key: str, info: _GGUFInfo) -> None:
    item_type, count = cursor.u32(), cursor.u64()
    info.lengths[key] = count
    if item_type == _STRING:
        for _ in range(count):
            cursor.skip(cursor.u64())
        return
    fmt = _SCALARS.get(item_type)
    if fmt is None:  # nested arrays appear in no model llama.cpp loads
        raise EstimateError(f"{path}: unsupported GGUF array of type {item_type} in {key}")
    if count <= _SMALL_ARRAY:
        info.meta[key] = list(cursor.unpack(f"<{count}{fmt}"))
    else:
        cursor.skip(count * struct.calcsize(fmt))


def _read_tensor(path: Path, cursor: _Cursor, quant_sizes: dict[int, tuple[str, int, int]]) -> _Tensor:
    name = cursor.string()
    n_dims = cursor.u32()
    if not 1 <= n_dims <= _MAX_DIMS:
        raise EstimateError(f"{path}: corrupt GGUF tensor {name!r} ({n_dims} dimensions)")
    dims = tuple(cursor.u64() for _ in range(n_dims))
    type_id, offset = cursor.u32(), cursor.u64()
    if type_id not in quant_sizes:
        raise EstimateError(f"{path}: tensor {name!r} has unknown ggml type {type_id}")
    type_name, block_size, type_size = quant_sizes[type_id]
    n_elements = math.prod(dims)
    if n_elements % block_size:
        raise EstimateError(f"{path}: tensor {name!r} has {n_elements} elements, not whole {type_name} blocks")
    return _Tensor(name, dims, type_name, offset, n_elements // block_size * type_size)


def _quant_sizes(path: Path) -> dict[int, tuple[str, int, int]]:
    try:
        from gguf import GGML_QUANT_SIZES
    except ImportError:
        raise EstimateError(
            f"{path}: reading GGUF files needs the gguf package (pip install 'hostler[llama]')"
        ) from None
    return {int(kind): (kind.name, block, size) for kind, (block, size) in GGML_QUANT_SIZES.items()}


# -- MLX --------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
_MAX_HEADER = 100 * MiB  # the format's own limit
_FLOAT_BYTES = {"F16": 2, "BF16": 2, "F32": 4}


def estimate_mlx(folder: Path, params: LoadParams) -> MemoryEstimate:
    """An MLX model folder: config.json and model*.safetensors (what mlx-lm loads).

    weights = the tensors' bytes; KV cache = n_ctx (padded to mlx-lm's 256-position steps)
    x layers x kv_heads x head_dim x K and V in the activations' type; compute = the last
    prefill chunk of n_batch tokens against a full context (float32 attention scores, which
    dominate) and its activations; runtime = mlx-lm's libraries beyond a llama.cpp worker's,
    and the tokenizer. Calibrated on Linux's CPU backend; Metal's allocator is not modelled.
    """
    config = _mlx_config(folder / "config.json")
    shards = sorted(folder.glob("model*.safetensors"))
    if not shards:
        raise EstimateError(f"{folder}: no model*.safetensors files in the model folder")
    by_dtype: dict[str, int] = {}
    for shard in shards:
        for dtype, size in _safetensors_bytes(shard).items():
            by_dtype[dtype] = by_dtype.get(dtype, 0) + size
    weights = sum(by_dtype.values())
    # Activations, and with them the KV cache, take the type most of the float weights have
    # (a quantized model's scales are in it too).
    floats = {d: n for d, n in by_dtype.items() if d in _FLOAT_BYTES}
    value_bytes = _FLOAT_BYTES[max(floats, key=lambda d: (floats[d], d))] if floats else 2

    def number(*keys: str, default: int | None = None) -> int:
        for key in keys:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        if default is None:
            raise EstimateError(f"{folder / 'config.json'}: missing {keys[0]}")
        return default

    n_layer = number("num_hidden_layers", "n_layer", "num_layers")
    hidden = number("hidden_size", "d_model", "n_embd")
    n_head = number("num_attention_heads", "n_head")
    n_kv_head = number("num_key_value_heads", default=n_head)
    head_dim = number("head_dim", default=hidden // max(n_head, 1))
    vocab = number("vocab_size", default=0)
    ffn = number("intermediate_size", default=4 * hidden)

    cells = _pad(params.n_ctx, MLX_KV_STEP)
    per_cell = 2 * n_layer * n_kv_head * head_dim * value_bytes
    kv = per_cell * cells
    chunk = min(params.n_batch, params.n_ctx)
    scores = n_head * chunk * cells * 4
    activations = chunk * (4 * hidden + 3 * ffn) * value_bytes
    compute = scores + activations + 2 * vocab * LOGIT_BYTES
    overhead = MLX_RUNTIME_BYTES + vocab * VOCAB_TOKEN_BYTES
    return MemoryEstimate(weights, kv, compute, overhead, per_cell)


def _mlx_config(path: Path) -> dict[str, object]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EstimateError(f"{path}: missing (an MLX model folder needs config.json)") from None
    except OSError as exc:
        raise EstimateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise EstimateError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise EstimateError(f"{path}: not a JSON object")
    # Multimodal checkpoints keep the language model's shape under text_config.
    text = config.get("text_config")
    if isinstance(text, dict):
        return {**config, **text}
    return config


def _safetensors_bytes(path: Path) -> dict[str, int]:
    """Bytes of tensor data in one file, by dtype."""
    try:
        with path.open("rb") as handle:
            size_bytes = handle.read(8)
            if len(size_bytes) < 8:
                raise EstimateError(f"{path}: truncated safetensors file (no header length)")
            (header_len,) = struct.unpack("<Q", size_bytes)
            if header_len > _MAX_HEADER:
                raise EstimateError(f"{path}: malformed safetensors header (claims {header_len} bytes)")
            raw = handle.read(header_len)
            file_size = handle.seek(0, 2)
    except OSError as exc:
        raise EstimateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) < header_len:
        raise EstimateError(f"{path}: truncated safetensors header")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EstimateError(f"{path}: malformed safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise EstimateError(f"{path}: malformed safetensors header (not a JSON object)")
    by_dtype: dict[str, int] = {}
    last = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = _tensor_span(path, name, entry)
        dtype = str(entry["dtype"])
        by_dtype[dtype] = by_dtype.get(dtype, 0) + end - start
        last = max(last, end)
    if 8 + header_len + last > file_size:
        raise EstimateError(f"{path}: truncated safetensors file ({file_size} bytes)")
    return by_dtype


def _tensor_span(path: Path, name: str, entry: object) -> tuple[int, int]:
    if not isinstance(entry, dict):
        raise EstimateError(f"{path}: malformed safetensors header entry {name!r}")
    offsets, shape, dtype = entry.get("data_offsets"), entry.get("shape"), entry.get("dtype")
    if not (_counts(offsets) and len(offsets) == 2 and _counts(shape) and isinstance(dtype, str)):
        raise EstimateError(f"{path}: malformed safetensors header entry {name!r}")
    start, end = offsets
    item = _SAFETENSORS_DTYPES.get(dtype)
    if not 0 <= start <= end or (item is not None and end - start != math.prod(shape) * item):
        raise EstimateError(f"{path}: tensor {name!r} has data_offsets that do not fit its {dtype} shape {shape}")
    return start, end


# -- small helpers ------------------------------------------------------------------------


def _pad(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value)


def _per_layer(value: object, n_layer: int) -> list[int]:
    if isinstance(value, list):
        return [_int(v) for v in value[:n_layer]]
    return [_int(value)] * n_layer


def _counts(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
