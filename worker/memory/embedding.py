"""What embeddings cost a GGUF worker: the packing budget of its embedding context and its memory.

A generative model's graph ends in its output layer, so llama.cpp computes the logits of every
token of an embedding batch, once in the compute buffer and once copied into the output
buffer: 2 x n_tokens x n_vocab x 4 bytes, far more than the vectors. The embedding context
(engines/llama_embed.py) therefore decodes at most `packing_budget` tokens at a time, chosen so
that one copy of those logits stays near LOGITS_BYTES (longer inputs span several decodes), and
lives only while embedding jobs run. `embedding_context_bytes` is what it holds then for short
inputs, counted in the estimate; an input of n tokens adds its KV cells (n x the KV bytes of a
cell) and attention scores against them while it is decoded.
"""

from __future__ import annotations

# One copy of a packed decode's logits; the budget (tokens per decode) follows from the vocabulary.
LOGITS_BYTES = 16 * 1024 * 1024
MIN_BUDGET = 16
LOGIT_BYTES = 4
KV_CELL_PAD = 256
# Attention scores of one layer (float32), twice: the scores and their softmax.
SCORE_COPIES = 2


def packing_budget(n_vocab: int, n_batch: int) -> int:
    """Tokens per packed decode: logits of about LOGITS_BYTES, within n_batch."""
    return max(1, min(n_batch, max(MIN_BUDGET, LOGITS_BYTES // (LOGIT_BYTES * max(1, n_vocab)))))


def embedding_context_bytes(
    *, n_vocab: int, n_embd: int, n_head: int, n_ff: int, kv_per_cell: int, n_batch: int
) -> int:
    """What the embedding context holds after a full packed decode: its KV cells, the logits
    (output buffer and compute buffer), the attention scores and feed-forward activations of a layer."""
    budget = packing_budget(n_vocab, n_batch)
    cells = -(-budget // KV_CELL_PAD) * KV_CELL_PAD
    logits = 2 * budget * (n_vocab + n_embd) * LOGIT_BYTES
    scores = SCORE_COPIES * n_head * budget * cells * 4
    activations = budget * (4 * n_embd + 3 * n_ff) * 4
    return cells * kv_per_cell + logits + scores + activations
