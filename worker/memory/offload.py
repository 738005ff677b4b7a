"""How llama.cpp splits a GGUF model between one GPU and host memory for a given n_gpu_layers.

llama.cpp numbers the repeating layers 0..n_layer-1 and the output layer n_layer, and
offloads the last n_gpu_layers of those n_layer + 1 (so the output layer goes first; -1 is
all of them). The input layer (token_embd) always stays on the CPU. A tied output (no
output.weight) gets its own copy of token_embd on the output layer's device. Each offloaded
layer's KV cache lives beside its weights (llama.cpp's offload_kqv, on by default), and the
GPU reserves a compute buffer for one micro-batch, which it allocates in full at load time
(unlike host memory, where untouched pages cost nothing).

`offload_facts` reads those sizes from the file once (the host agent reports them);
`gpu_split` turns them into bytes for any params, on the host and in the controller alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hostler.schemas import GpuOffload, LoadParams, format_bytes

from .gguf import GGUFInfo, meta_int

__all__ = ["CUDA_RUNTIME_BYTES", "OUTPUT_TENSORS", "GpuSplit", "gpu_split", "offload_facts", "offloaded_layers"]

MiB = 1024**2
# What a process's CUDA context and cuBLAS workspace hold on the GPU before any tensor: not
# in llama.cpp's own buffer sizes, but in what nvidia-smi shows. Published figures for recent
# drivers range from about 250 to 500 MiB; not measured here (no GPU at hand).
CUDA_RUNTIME_BYTES = 384 * MiB
# As engines/llama_batch.py sets it: llama.cpp's micro-batch, the rows a compute buffer is sized for.
MAX_UBATCH = 512
KV_CELL_PAD = 256
_LAYER = re.compile(r"^blk\.(\d+)\.")
OUTPUT_TENSORS = ("output.weight", "output.bias", "output_norm.weight", "output_norm.bias")


@dataclass(frozen=True)
class GpuSplit:
    """The part of a model that goes to the GPU, and what that takes out of host memory."""

    layers: int  # of the n_layer + 1 (repeating layers and the output layer)
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    runtime_bytes: int  # the CUDA context
    # The offloaded tensors as host memory held them: a tied output's copy of token_embd was
    # never there (token_embd itself stays, for the input layer).
    host_weights_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        if not self.layers:
            return 0
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes + self.runtime_bytes

    @property
    def host_saved_bytes(self) -> int:
        """What no longer sits in host memory: the offloaded weights and their KV cache."""
        return self.host_weights_bytes + self.kv_cache_bytes

    def describe(self) -> str:
        return (
            f"{format_bytes(self.total_bytes)} on one GPU ({self.layers} layers: weights "
            f"{format_bytes(self.weights_bytes)} + KV cache {format_bytes(self.kv_cache_bytes)} + compute "
            f"{format_bytes(self.compute_bytes)} + CUDA runtime {format_bytes(self.runtime_bytes)})"
        )


def offload_facts(info: GGUFInfo, arch: str, kv_bytes_per_layer_cell: list[int]) -> GpuOffload:
    """A GGUF file's sizes by llama.cpp layer (what `gpu_split` needs)."""
    n_layer = meta_int(info.meta.get(f"{arch}.block_count"))
    layers = [0] * n_layer
    output = input_ = tied = 0
    for tensor in info.tensors:
        found = _LAYER.match(tensor.name)
        if found and int(found.group(1)) < n_layer:
            layers[int(found.group(1))] += tensor.n_bytes
        elif tensor.name in OUTPUT_TENSORS:
            output += tensor.n_bytes
        else:
            input_ += tensor.n_bytes
    if not any(t.name == "output.weight" for t in info.tensors):
        # llama.cpp duplicates token_embd onto the output layer's device.
        tied = next((t.n_bytes for t in info.tensors if t.name == "token_embd.weight"), 0)
    heads = info.meta.get(f"{arch}.attention.head_count")
    n_head = max(meta_int(h) for h in heads) if isinstance(heads, list) and heads else meta_int(heads)
    ffn = info.meta.get(f"{arch}.feed_forward_length")
    n_ff = max(meta_int(f) for f in ffn) if isinstance(ffn, list) and ffn else meta_int(ffn)
    return GpuOffload(
        layer_bytes=layers,
        layer_kv_bytes_per_cell=kv_bytes_per_layer_cell[:n_layer],
        output_bytes=output,
        tied_output_bytes=tied,
        input_bytes=input_,
        n_vocab=info.lengths.get("tokenizer.ggml.tokens") or meta_int(info.meta.get(f"{arch}.vocab_size")),
        n_embd=meta_int(info.meta.get(f"{arch}.embedding_length")),
        n_head=n_head,
        n_ff=n_ff,
    )


def offloaded_layers(n_layer: int, n_gpu_layers: int) -> range:
    """The repeating layers on the GPU (the output layer is there whenever this is asked for any)."""
    wanted = n_layer + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layer + 1)
    return range(max(n_layer + 1 - wanted, 0), n_layer) if wanted else range(0)


def gpu_split(facts: GpuOffload, params: LoadParams) -> GpuSplit:
    """What `params` (n_gpu_layers, n_ctx, n_parallel, n_batch) put on the GPU."""
    n_layer = len(facts.layer_bytes)
    on_gpu = offloaded_layers(n_layer, params.n_gpu_layers)
    count = n_layer + 1 if params.n_gpu_layers < 0 else min(params.n_gpu_layers, n_layer + 1)
    if count == 0:
        return GpuSplit(0, 0, 0, 0, 0)
    cells = -(-params.n_ctx // KV_CELL_PAD) * KV_CELL_PAD
    own = sum(facts.layer_bytes[i] for i in on_gpu) + facts.output_bytes
    kv = cells * params.n_parallel * sum(facts.layer_kv_bytes_per_cell[i] for i in on_gpu)
    ubatch = min(max(min(params.n_batch, params.n_ctx), params.n_parallel), MAX_UBATCH)
    # ggml's allocator reuses the buffer between the graph's steps, so it holds the largest of
    # the attention scores and a batch of logits, plus the activations live beside them. The
    # scores exist only with flash attention off: llama.cpp's default (auto, which BatchedLlama
    # keeps unless LoadParams.flash_attn says otherwise) turns it on where the GPU has the kernel.
    scores = facts.n_head * cells * ubatch * 4 if on_gpu and params.flash_attn is False else 0
    logits = facts.n_vocab * ubatch * 4
    activations = ubatch * (facts.n_embd + facts.n_ff) * 4
    compute = max(scores, logits) + activations
    return GpuSplit(count, own + facts.tied_output_bytes, kv, compute, CUDA_RUNTIME_BYTES, own)
