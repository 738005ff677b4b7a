#!/usr/bin/env python3
"""Write a tiny, random-weight, llama-architecture GGUF model for tests.

The model is useless as a language model, but it is a *real* GGUF file that
llama.cpp (and so llama-cpp-python) loads in milliseconds, with a
SentencePiece-style vocabulary that can encode any UTF-8 text through byte
fallback, and an optional Jinja chat template. That lets tests exercise the
whole load / tokenize / generate / chat path without downloading anything.

Usage::

    python scripts/make_tiny_gguf.py OUT.gguf [--no-chat-template] [--seed N] [--ctx N]
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import tempfile
from collections.abc import Sequence

import gguf
import numpy as np
import numpy.typing as npt

__all__ = [
    "BOS_ID",
    "DEFAULT_TEMPLATE",
    "EOS_ID",
    "IM_END_ID",
    "IM_START_ID",
    "UNK_ID",
    "build_vocab",
    "main",
    "write_tiny_gguf",
]

# ChatML-style. The leading bos_token matters: llama-cpp-python does not add
# BOS itself when a Jinja template formats the prompt. `content` is checked
# with `is string` so OpenAI-style messages with null content still render.
DEFAULT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' ~ message['role'] ~ '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

UNK_ID = 0
BOS_ID = 1
EOS_ID = 2
IM_START_ID = 3
IM_END_ID = 4
_CONTROL_TOKENS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")

# SentencePiece's word-boundary marker; llama.cpp maps spaces to it.
_SPACE = "\u2581"

N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2  # < N_HEAD so grouped-query attention is exercised too.
N_FF = 128
HEAD_DIM = N_EMBD // N_HEAD
RMS_EPS = 1e-5
ROPE_FREQ_BASE = 10000.0

# Logit bonus for whole-word tokens (see _output_weight for why).
_WORD_BIAS = 1.0

_WORDS = """
the a an and of to in is it you that he she was for on are with as his they
be at one have this from or had by hot word but what some we can out other
were all there when up use your how said each which their time will way about
many then them write would like so these her long make thing see him two has
look more day could go come did number sound no most people my over know
water than call first who may down side been now find any new work part take
get place made live where after back little only round man year came show
every good me give our under name very through just form sentence great think
say help low line differ turn cause much mean before move right boy old too
same tell does set three want air well also play small end put home read hand
port large spell add even land here must big high such follow act why ask men
change went light kind off need house picture try us again animal point mother
world near build self earth father head stand own page should country found
answer school grow study still learn plant cover food sun four between state
keep eye never last let thought city tree cross farm hard start might story
saw far sea draw left late run while press close night real life few north
once upon hello test model token story king queen cat dog
""".split()

_CAPITALISED = ("The", "A", "I", "Once", "Hello", "It", "He", "She", "We", "They", "In")

_SINGLE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?;:'\"-()"

Matrix = npt.NDArray[np.float32]


def build_vocab() -> tuple[list[str], list[float], list[int]]:
    """Return (tokens, scores, token_types) for the tiny SentencePiece vocab."""
    tokens: list[str] = list(_CONTROL_TOKENS)
    types: list[int] = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ]
    # llama.cpp's byte fallback looks these up by this exact spelling
    # (upper-case hex), so any text that has no piece still tokenizes.
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        types.append(gguf.TokenType.BYTE)

    pieces: dict[str, None] = {}  # Ordered set: keeps ids stable across runs.
    for ch in _SPACE + _SINGLE_CHARS:
        pieces[ch] = None
    # llama.cpp's SPM tokenizer only reaches a multi-character piece by
    # merging adjacent pieces that are themselves in the vocab, so every
    # prefix of "▁word" must exist or the word silently falls back to
    # single characters.
    for word in [*_WORDS, *_CAPITALISED]:
        piece = _SPACE + word
        for end in range(2, len(piece) + 1):
            pieces[piece[:end]] = None
    for piece in pieces:
        tokens.append(piece)
        types.append(gguf.TokenType.NORMAL)

    # Only relative order matters to the SPM merge loop; real models use
    # negative log-probabilities, so mimic that shape.
    scores = [0.0 if t != gguf.TokenType.NORMAL else -float(i) for i, t in enumerate(types)]
    return tokens, scores, types


def _normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> Matrix:
    # 1/sqrt(fan_in) keeps activations O(1) through the layers, so every
    # layer actually influences the logits instead of vanishing.
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(1.0 / math.sqrt(fan_in))


def _output_weight(rng: np.random.Generator, tokens: Sequence[str], token_types: Sequence[int]) -> Matrix:
    # Pure random logits would often pick BYTE tokens (yielding broken UTF-8)
    # or </s> at the first step (yielding an empty completion). A constant
    # column, read against the constant component _token_embd adds to every
    # hidden state, gives whole words a steady lead over word fragments and
    # a large one over BYTE/CONTROL tokens, so greedy output is readable
    # gibberish that runs to max_tokens.
    whole_words = {_SPACE + w for w in [*_WORDS, *_CAPITALISED]}
    column = [
        _WORD_BIAS if tok in whole_words else 0.0 if typ == gguf.TokenType.NORMAL else -_WORD_BIAS
        for tok, typ in zip(tokens, token_types, strict=True)
    ]
    weight = _normal(rng, (len(tokens), N_EMBD), N_EMBD)
    weight[:, 0] = np.asarray(column, dtype=np.float32)
    return weight


def _token_embd(rng: np.random.Generator, n_vocab: int) -> Matrix:
    weight = rng.standard_normal((n_vocab, N_EMBD), dtype=np.float32)
    # Large enough to survive the residual adds of both layers, so the final
    # hidden state always carries the component _output_weight's bias reads.
    weight[:, 0] = 4.0
    return weight


def _tensors(rng: np.random.Generator, tokens: Sequence[str], token_types: Sequence[int]) -> dict[str, Matrix]:
    # gguf takes numpy arrays in row-major (rows, cols) order and stores the
    # dims reversed as ggml's ne[]. llama.cpp expects e.g. attn_q with
    # ne = {n_embd, n_head*head_dim}, i.e. numpy shape (out_features,
    # in_features) -- the same layout as a PyTorch nn.Linear weight.
    n_vocab = len(tokens)
    ones = np.ones(N_EMBD, dtype=np.float32)
    tensors: dict[str, Matrix] = {
        "token_embd.weight": _token_embd(rng, n_vocab),
        "output_norm.weight": ones.copy(),
        "output.weight": _output_weight(rng, tokens, token_types),
    }
    q_dim = N_HEAD * HEAD_DIM
    kv_dim = N_HEAD_KV * HEAD_DIM
    for i in range(N_LAYER):
        blk = f"blk.{i}"
        tensors[f"{blk}.attn_norm.weight"] = ones.copy()
        tensors[f"{blk}.attn_q.weight"] = _normal(rng, (q_dim, N_EMBD), N_EMBD)
        tensors[f"{blk}.attn_k.weight"] = _normal(rng, (kv_dim, N_EMBD), N_EMBD)
        tensors[f"{blk}.attn_v.weight"] = _normal(rng, (kv_dim, N_EMBD), N_EMBD)
        tensors[f"{blk}.attn_output.weight"] = _normal(rng, (N_EMBD, q_dim), q_dim)
        tensors[f"{blk}.ffn_norm.weight"] = ones.copy()
        tensors[f"{blk}.ffn_gate.weight"] = _normal(rng, (N_FF, N_EMBD), N_EMBD)
        tensors[f"{blk}.ffn_up.weight"] = _normal(rng, (N_FF, N_EMBD), N_EMBD)
        tensors[f"{blk}.ffn_down.weight"] = _normal(rng, (N_EMBD, N_FF), N_FF)
    return tensors


def write_tiny_gguf(
    path: pathlib.Path,
    *,
    chat_template: str | None = DEFAULT_TEMPLATE,
    seed: int = 0,
    n_ctx_train: int = 512,
    pooling_type: int | None = None,
    causal: bool = True,
) -> pathlib.Path:
    """Write the tiny model to ``path`` and return ``path``.

    The output is byte-for-byte deterministic for a given (chat_template,
    seed, n_ctx_train, pooling_type, causal). ``chat_template=None`` omits
    ``tokenizer.chat_template`` entirely. ``pooling_type`` (llama.cpp's enum: 1 mean,
    2 cls, 3 last) writes ``llama.pooling_type``, as embedding models declare theirs;
    ``causal=False`` writes ``llama.attention.causal = false``, as BERT-like ones do.
    """
    path = pathlib.Path(path)
    if n_ctx_train < 1:
        raise ValueError(f"n_ctx_train must be positive, got {n_ctx_train}")

    tokens, scores, token_types = build_vocab()
    rng = np.random.default_rng(seed)
    tensors = _tensors(rng, tokens, token_types)

    path.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a concurrent reader (or a test
    # run that was interrupted) never sees a half-written model.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = pathlib.Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp_path, arch="llama")
        writer.add_name(f"hostler-tiny-llama-seed{seed}")
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_vocab_size(len(tokens))
        writer.add_context_length(n_ctx_train)
        writer.add_embedding_length(N_EMBD)
        writer.add_block_count(N_LAYER)
        writer.add_feed_forward_length(N_FF)
        writer.add_head_count(N_HEAD)
        writer.add_head_count_kv(N_HEAD_KV)
        writer.add_rope_dimension_count(HEAD_DIM)
        writer.add_rope_freq_base(ROPE_FREQ_BASE)
        writer.add_layer_norm_rms_eps(RMS_EPS)

        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(token_types)
        writer.add_unk_token_id(UNK_ID)
        writer.add_bos_token_id(BOS_ID)
        writer.add_eos_token_id(EOS_ID)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        # llama.cpp defaults to Llama-2's implicit leading space, which makes
        # detokenize(tokenize(s)) == " " + s and inserts a space after every
        # special token ("<|im_start|> user"). Off, text round-trips exactly.
        writer.add_add_space_prefix(False)
        if chat_template is not None:
            writer.add_chat_template(chat_template)
        if pooling_type is not None:
            writer.add_pooling_type(gguf.PoolingType(pooling_type))
        if not causal:
            writer.add_causal_attention(False)

        for name, tensor in tensors.items():
            writer.add_tensor(name, tensor)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        # mkstemp creates the file 0600; a model file has no reason to be private.
        tmp_path.chmod(0o644)
        tmp_path.replace(path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=pathlib.Path, help="output .gguf path")
    parser.add_argument(
        "--no-chat-template",
        action="store_true",
        help="omit tokenizer.chat_template from the metadata",
    )
    parser.add_argument("--seed", type=int, default=0, help="RNG seed for the weights")
    parser.add_argument(
        "--ctx",
        type=int,
        default=512,
        help="training context length (llama.context_length)",
    )
    args = parser.parse_args(argv)

    out = write_tiny_gguf(
        args.out,
        chat_template=None if args.no_chat_template else DEFAULT_TEMPLATE,
        seed=args.seed,
        n_ctx_train=args.ctx,
    )
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
