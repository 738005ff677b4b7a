"""How much memory a model will take, from its files alone, before it is loaded.

The estimate is what loading the model and running one generation on a short prompt add to
the resident set (RSS) of a worker process that has already imported its engine, on the CPU.
It counts what llama.cpp (as llama-cpp-python drives it) allocates *and touches*, because
untouched pages cost nothing: llama.cpp reserves a compute buffer for a whole batch of logits
(514 MiB for Gemma 3 270M at n_batch 512), but a generation only writes one row of it.

Left out: a long prompt touches more of the compute buffer, up to about
n_head * n_ctx * n_ubatch * 8 bytes of attention scores plus per-token activations (128 MiB
for Gemma 3 270M at n_ctx 8192; a 4000-token prompt measured 78 MiB more than a short one).
GPU offload (n_gpu_layers) moves layers' weights and KV cache to one GPU (`offload.py`); the
estimate then counts them in `vram_bytes` instead of host memory.

This module is the policy (what each part costs, and what a worker process adds: `worker_need`);
`gguf` and `safetensors` read the facts it needs from the files.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hostler.schemas import GpuOffload, LoadParams, ModelInfo, format_bytes
from hostler.worker.hardware.cpu import instruction_sets, llama_extra_buffers_safe

from .embedding import embedding_context_bytes
from .files import MLX_CONFIG, MLX_WEIGHTS, EstimateError
from .gguf import GGUFInfo, Tensor, meta_int, read_gguf
from .offload import GpuSplit, gpu_split, offload_facts
from .safetensors import read_mlx_config, safetensors_bytes

__all__ = [
    "WORKER_BASE_BYTES",
    "EstimateError",
    "MemoryEstimate",
    "embedding_estimate",
    "Need",
    "estimate",
    "estimate_gguf",
    "estimate_mlx",
    "kv_cells",
    "kv_resize_bytes",
    "worker_need",
]

MiB = 1024**2

# A worker process before it loads anything (Python, llama.cpp, redis client), measured on
# Linux x86-64 (66 MiB after importing llama_cpp); the memory estimate covers what loading adds.
WORKER_BASE_BYTES = 72 * MiB

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
# A transformers tokenizer holds a token in tokenizers' vocabulary and reverse maps and its BPE
# merge in the merges map, Python's side on top: 55.5 MiB more for SmolLM2's 49,152 tokens
# (48,900 merges) than for a 512-token one, about 1,200 bytes a token.
MLX_VOCAB_TOKEN_BYTES = 1200

Engine = Literal["llama", "mlx"]
# The float types activations (and with them an MLX KV cache) may take, and their sizes.
_FLOAT_BYTES = {"F16": 2, "BF16": 2, "F32": 4}


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    overhead_bytes: int  # runtime buffers not in the above: vocabulary, output/logits buffers, batch
    # KV cache per context cell, so a placement can rescale this estimate to another n_ctx.
    kv_bytes_per_cell: int = 0
    # What n_gpu_layers put on one GPU (None: nothing), and the file's sizes by layer.
    gpu: GpuSplit | None = None
    offload: GpuOffload | None = None
    # Host memory for prompts kept beside the slots (engines/kept_prompts.py), a bound the
    # engine fills as prompts are kept.
    kept_prompts_bytes: int = 0

    @property
    def vram_bytes(self) -> int:
        return self.gpu.total_bytes if self.gpu is not None else 0

    @property
    def total_bytes(self) -> int:
        parts = (self.weights_bytes, self.kv_cache_bytes, self.compute_bytes, self.overhead_bytes)
        return sum(parts) + self.kept_prompts_bytes

    def describe(self) -> str:
        """The host-memory part; `gpu.describe()` tells the GPU's."""
        text = (
            f"{format_bytes(self.total_bytes)} (weights {format_bytes(self.weights_bytes)}"
            f" + KV cache {format_bytes(self.kv_cache_bytes)} + compute {format_bytes(self.compute_bytes)}"
            f" + runtime {format_bytes(self.overhead_bytes)}"
            + (f" + kept prompts {format_bytes(self.kept_prompts_bytes)}" if self.kept_prompts_bytes else "")
            + ")"
        )
        return text


def estimate(path: Path, engine: Engine, params: LoadParams) -> MemoryEstimate:
    if engine == "llama":
        return estimate_gguf(path, params)
    if engine == "mlx":
        return estimate_mlx(path, params)
    raise ValueError(f"unknown engine {engine!r} (llama or mlx)")


# -- GGUF ---------------------------------------------------------------------------


def estimate_gguf(path: Path, params: LoadParams) -> MemoryEstimate:
    info = read_gguf(path)
    arch = info.meta.get("general.architecture")
    if not isinstance(arch, str):
        raise EstimateError(f"{path}: GGUF metadata has no general.architecture")

    n_ctx = params.n_ctx
    n_batch = min(params.n_batch, n_ctx)  # as BatchedLlama passes it
    n_vocab = info.lengths.get("tokenizer.ggml.tokens") or meta_int(info.meta.get(f"{arch}.vocab_size"))
    n_merges = info.lengths.get("tokenizer.ggml.merges", 0)

    per_layer_cell = _kv_bytes_per_layer_cell(info.meta, arch)
    facts = offload_facts(info, arch, per_layer_cell)
    split = gpu_split(facts, params)
    # The same arithmetic as placement's (worker_need), which has only the report: what stays
    # is everything less the offloaded layers' own tensors.
    weights = max(0, _resident_weight_bytes(info, _repacked_row_multiples()) - split.host_weights_bytes)

    # BatchedLlama passes n_ctx through unclamped (beyond the trained context llama.cpp only
    # warns), and llama.cpp pads it. llama-cpp-python leaves llama.cpp's swa_full at its
    # default (true), so sliding-window layers get a full-size cache too: the load log says
    # "using full-size SWA cache" and sizes both caches at n_ctx cells.
    per_cell = sum(per_layer_cell)
    # One KV stream of n_ctx cells per slot (continuous batching, engines/llama_batch.py);
    # an offloaded layer's cache is on the GPU.
    kv = kv_cells(n_ctx) * params.n_parallel * per_cell - split.kv_cache_bytes

    # Only the rows a step writes: one row of logits per slot, plus graph bookkeeping.
    max_nodes = max(1024, 8 * len(info.tensors))
    compute = n_vocab * LOGIT_BYTES * params.n_parallel + max_nodes * GRAPH_NODE_BYTES
    # The embedding context while embedding jobs run (freed when none does): memory/embedding.py.
    compute += _embedding_bytes(info.meta, arch, n_vocab, per_cell, n_batch)

    # llama-cpp-python's llama_batch gives each of its n_batch slots a seq_id array of
    # n_ctx ints; malloc writes a header per allocation, so each slot costs at most a page.
    batch = n_batch * min(_pad(4 * n_ctx + 16, 16), PAGE)
    overhead = (
        RUNTIME_BASE_BYTES
        + n_vocab * (VOCAB_TOKEN_BYTES + LOGIT_BYTES + SAMPLER_TOKEN_BYTES)  # + the output buffer
        + n_merges * MERGE_BYTES
        + batch
    )
    # Kept prompts: as many cells as all slots hold, in host memory, unless the load says otherwise.
    slots_kv = kv_cells(n_ctx) * params.n_parallel * per_cell
    kept = slots_kv if params.cache_ram_mib is None else params.cache_ram_mib * 2**20
    # Per context cell of every slot (all layers, wherever they are), and of the kept prompts
    # when they follow the context: a spec with another n_ctx resizes all of them.
    per_ctx_cell = per_cell * params.n_parallel * (2 if params.cache_ram_mib is None else 1)
    return MemoryEstimate(
        weights,
        kv,
        compute,
        overhead,
        per_ctx_cell,
        gpu=split if split.layers else None,
        offload=facts,
        kept_prompts_bytes=kept,
    )


def kv_cells(n_ctx: int) -> int:
    """KV cache cells a context of n_ctx tokens gets (llama.cpp and mlx-lm both pad to 256)."""
    return _pad(n_ctx, KV_CELL_PAD)


def kv_resize_bytes(kv_bytes_per_cell: int, estimated_n_ctx: int, n_ctx: int) -> int:
    """How much an estimate made at estimated_n_ctx grows (or shrinks) when loaded at n_ctx."""
    return (kv_cells(n_ctx) - kv_cells(estimated_n_ctx)) * kv_bytes_per_cell


@dataclass(frozen=True)
class Need:
    """What a new worker of a model reserves: host memory, and memory on one GPU.

    `ram_without_gpu` is the host memory it takes on a host whose report lists no GPU: there
    llama.cpp runs every layer on the CPU (or, on Apple silicon, in the unified memory the
    RAM figure already covers), whatever n_gpu_layers says."""

    ram: int
    vram: int
    ram_without_gpu: int
    text: str


def worker_need(info: ModelInfo | None, params: LoadParams | None = None) -> Need:
    """What a new worker of a model reserves, and how that adds up, for a person to read.

    info is the model as a host reports it (its estimate at `estimate_params`); params, when
    the model is to be loaded with others (a client.load spec), resize its KV cache and move
    layers between the GPU and host memory.
    """
    base = f"worker process {format_bytes(WORKER_BASE_BYTES)}"
    if info is None:
        return Need(WORKER_BASE_BYTES, 0, WORKER_BASE_BYTES, base)
    if info.estimate_bytes is None:
        # Unreadable files: place it anyway so the worker fails its jobs with the reason.
        need = info.size_bytes + WORKER_BASE_BYTES
        return Need(need, 0, need, f"{format_bytes(need)} (file size {format_bytes(info.size_bytes)} + {base})")
    need = info.estimate_bytes + WORKER_BASE_BYTES
    text = f"{info.estimate} + {base}"
    estimated = info.estimate_params or LoadParams(n_ctx=info.estimate_n_ctx or LoadParams().n_ctx)
    target = params or estimated
    if target.n_ctx != estimated.n_ctx and info.kv_bytes_per_cell:
        kv_delta = kv_resize_bytes(info.kv_bytes_per_cell, estimated.n_ctx, target.n_ctx)
        if kv_delta:
            need += kv_delta
            text += f", KV cache resized to n_ctx {target.n_ctx}: {kv_delta / 2**20:+.0f} MiB"
    if info.offload is None:
        return Need(need, 0, need, f"{format_bytes(need)} ({text})")
    # Back to every layer in host memory, then out again as `target` offloads them.
    was = gpu_split(info.offload, estimated)
    split = gpu_split(info.offload, target)
    all_in_ram = need + was.host_saved_bytes
    ram = all_in_ram - split.host_saved_bytes
    if not split.layers:
        return Need(all_in_ram, 0, all_in_ram, f"{format_bytes(all_in_ram)} ({text})")
    if split.host_saved_bytes != was.host_saved_bytes:
        text += f", {split.layers} layers offloaded: {(was.host_saved_bytes - split.host_saved_bytes) / 2**20:+.0f} MiB"
    return Need(ram, split.total_bytes, all_in_ram, f"{format_bytes(ram)} of RAM ({text}) + {split.describe()}")


def _kv_bytes_per_layer_cell(meta: dict[str, object], arch: str) -> list[int]:
    n_layer = meta_int(meta.get(f"{arch}.block_count"))
    n_embd = meta_int(meta.get(f"{arch}.embedding_length"))
    heads = _per_layer(meta.get(f"{arch}.attention.head_count"), n_layer)
    # Hybrid and recurrent models store head_count_kv per layer, 0 where a layer keeps a
    # recurrent state instead of a KV cache.
    kv_heads = _per_layer(
        meta.get(f"{arch}.attention.head_count_kv", meta.get(f"{arch}.attention.head_count")), n_layer
    )
    head_default = n_embd // max(heads) if heads and max(heads) > 0 else 0
    key_length = meta_int(meta.get(f"{arch}.attention.key_length")) or head_default
    value_length = meta_int(meta.get(f"{arch}.attention.value_length")) or head_default
    return [heads_kv * (key_length + value_length) * KV_BYTES_PER_VALUE for heads_kv in kv_heads]


def _resident_weight_bytes(info: GGUFInfo, repacked: dict[str, int]) -> int:
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


def _is_repacked(tensor: Tensor, repacked: dict[str, int]) -> bool:
    multiple = repacked.get(tensor.type_name)
    if multiple is None or len(tensor.dims) < 2 or any(d != 1 for d in tensor.dims[2:]):
        return False
    return tensor.name.endswith(".weight") and tensor.dims[1] % multiple == 0


def _repacked_row_multiples() -> dict[str, int]:
    """The quant types ggml's CPU backend repacks on this machine, and the row multiple it needs."""
    if not llama_extra_buffers_safe():
        return {}  # loaded without extra buffer types: nothing is repacked
    machine = platform.machine().lower()
    found = instruction_sets()  # llama.cpp's names (AVX2, not /proc/cpuinfo's avx2)
    if machine in ("x86_64", "amd64"):
        # Instruction sets unknown: every x86-64 machine a model is served from has AVX2.
        if found and "AVX2" not in found:
            return {}
        types = {"Q4_0": 8, "Q4_K": 8, "IQ4_NL": 8, "MXFP4": 8}
        if "AVX512" in found:
            types["Q2_K"] = 8
        return types
    if machine in ("arm64", "aarch64"):
        if found and "DOTPROD" not in found:
            return {}
        return {"Q4_0": 4, "Q8_0": 4, "IQ4_NL": 4, "MXFP4": 4, "Q4_K": 8, "Q5_K": 8, "Q6_K": 8}
    return {}


# -- MLX --------------------------------------------------------------------------------


def estimate_mlx(folder: Path, params: LoadParams) -> MemoryEstimate:
    """An MLX model folder: config.json and model*.safetensors (what mlx-lm loads).

    weights = the tensors' bytes; KV cache = n_ctx (padded to mlx-lm's 256-position steps)
    x layers x kv_heads x head_dim x K and V in the activations' type, for each slot; compute =
    the last prefill chunk of n_batch tokens against a full context (its attention scores and
    activations, in the activations' type), for each slot (BatchGenerator prefills the slots' prompts together);
    runtime = mlx-lm's libraries beyond a llama.cpp worker's, and the tokenizer. Calibrated on
    Linux's CPU backend; Metal's allocator is not modelled.
    """
    config = read_mlx_config(folder / MLX_CONFIG)
    shards = sorted(folder.glob(MLX_WEIGHTS))
    if not shards:
        raise EstimateError(f"{folder}: no {MLX_WEIGHTS} files in the model folder")
    by_dtype: dict[str, int] = {}
    for shard in shards:
        for dtype, size in safetensors_bytes(shard).items():
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
            raise EstimateError(f"{folder / MLX_CONFIG}: missing {keys[0]}")
        return default

    n_layer = number("num_hidden_layers", "n_layer", "num_layers")
    hidden = number("hidden_size", "d_model", "n_embd")
    n_head = number("num_attention_heads", "n_head")
    n_kv_head = number("num_key_value_heads", default=n_head)
    head_dim = number("head_dim", default=hidden // max(n_head, 1))
    vocab = number("vocab_size", default=0)
    ffn = number("intermediate_size", default=4 * hidden)

    cells = _pad(params.n_ctx, MLX_KV_STEP)
    slots = params.n_parallel
    # One cache of n_ctx per sequence in flight (mlx-lm's BatchGenerator, engines/mlx_batch.py).
    per_cell = 2 * n_layer * n_kv_head * head_dim * value_bytes * slots
    kv = per_cell * cells
    chunk = min(params.n_batch, params.n_ctx)
    # Attention scores in the activations' type: MLX's attention keeps them so.
    scores = n_head * chunk * cells * value_bytes
    activations = chunk * (4 * hidden + 3 * ffn) * value_bytes
    # BatchGenerator prefills up to n_slots prompts together, a chunk of each per step.
    compute = slots * (scores + activations) + 2 * slots * vocab * LOGIT_BYTES
    overhead = MLX_RUNTIME_BYTES + vocab * MLX_VOCAB_TOKEN_BYTES
    # Kept prompt caches (engines/mlx_batch.py): as much as the slots' KV, unless the load says.
    kept = kv if params.cache_ram_mib is None else params.cache_ram_mib * 2**20
    per_ctx_cell = per_cell * (2 if params.cache_ram_mib is None else 1)
    return MemoryEstimate(weights, kv, compute, overhead, per_ctx_cell, kept_prompts_bytes=kept)


# -- small helpers ------------------------------------------------------------------------


def _pad(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def embedding_estimate(path: Path, params: LoadParams) -> int:
    """The part of estimate_gguf's compute that is the embedding context (scripts/measure_memory.py)."""
    info = read_gguf(path)
    arch = str(info.meta.get("general.architecture"))
    n_vocab = info.lengths.get("tokenizer.ggml.tokens") or meta_int(info.meta.get(f"{arch}.vocab_size"))
    per_cell = sum(_kv_bytes_per_layer_cell(info.meta, arch))
    return _embedding_bytes(info.meta, arch, n_vocab, per_cell, min(params.n_batch, params.n_ctx))


def _embedding_bytes(meta: dict[str, object], arch: str, n_vocab: int, kv_per_cell: int, n_batch: int) -> int:
    n_layer = meta_int(meta.get(f"{arch}.block_count"))
    return embedding_context_bytes(
        n_vocab=n_vocab,
        n_embd=meta_int(meta.get(f"{arch}.embedding_length")),
        n_head=max(_per_layer(meta.get(f"{arch}.attention.head_count"), n_layer) or [0]),
        n_ff=max(_per_layer(meta.get(f"{arch}.feed_forward_length"), n_layer) or [0]),
        kv_per_cell=kv_per_cell,
        n_batch=n_batch,
    )


def _per_layer(value: object, n_layer: int) -> list[int]:
    if isinstance(value, list):
        return [meta_int(v) for v in value[:n_layer]]
    return [meta_int(value)] * n_layer
