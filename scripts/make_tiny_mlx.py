#!/usr/bin/env python3
"""Write a tiny, random-weight MLX model folder (mlx-lm's llama architecture) for tests.

The folder is what mlx-lm loads from the Hugging Face hub: config.json, model.safetensors,
and a tokenizer (tokenizer.json from the `tokenizers` library: byte-level BPE trained on a
small generated corpus, so it encodes any UTF-8 text; tokenizer_config.json with BOS, EOS
and an optional ChatML chat template). Its text is nonsense, but every byte of it is a
function of the arguments: the same seed gives the same folder.

Usage::

    python scripts/make_tiny_mlx.py OUT_DIR [--seed N] [--hidden 64] [--layers 2] [--no-chat-template]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import struct
import sys
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["BOS", "CHAT_TEMPLATE", "EOS", "IM_END", "IM_START", "main", "write_tiny_mlx"]

BOS, EOS, IM_START, IM_END = "<s>", "</s>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (BOS, EOS, IM_START, IM_END)

# ChatML. The template writes BOS itself: a chat prompt is encoded without special tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' ~ message['role'] ~ '\\n' ~ message['content'] ~ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_WORDS = (
    "the a an of to in on at for with from by about into over after before under between "
    "cat dog bird fish horse mouse river mountain city village house garden road bridge tree "
    "flower stone cloud rain snow wind sun moon star sky sea ship boat train car bike book "
    "letter story song word name day night morning evening week year time hour minute "
    "red blue green yellow black white small big old new long short warm cold quiet loud "
    "runs walks sings reads writes sees finds makes takes gives opens closes holds brings "
    "is was are were has had will can may must should would could "
    "one two three four five six seven eight nine ten hello world yes no please thanks "
    "question answer model token queue worker host redis stream text count load"
).split()

_DTYPES: dict[str, tuple[str, type[np.generic]]] = {
    "float16": ("F16", np.float16),
    "float32": ("F32", np.float32),
}


def _corpus(rng: random.Random, sentences: int = 3000) -> list[str]:
    lines = []
    for _ in range(sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice((".", ".", "!", "?", ",")))
    # Digits, punctuation and a little non-ASCII, so common pieces of such text get merges too.
    lines += [f"{n} + {n + 1} = {2 * n + 1}; café, naïve, über - 'quoted' (x)" for n in range(200)]
    return lines


def _tokenizer_json(seed: int, vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(random.Random(seed)), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    # Like Llama's tokenizers: encoding with special tokens puts BOS in front.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return str(tokenizer.to_str(pretty=True))


def _tensors(
    rng: np.random.Generator,
    *,
    vocab: int,
    quiet: list[int],
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
) -> dict[str, npt.NDArray[np.float32]]:
    head_dim = hidden // heads

    def normal(*shape: int, std: float) -> npt.NDArray[np.float32]:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    tensors = {"model.embed_tokens.weight": normal(vocab, hidden, std=1.0)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": normal(heads * head_dim, hidden, std=0.2),
            p + "self_attn.k_proj.weight": normal(kv_heads * head_dim, hidden, std=0.2),
            p + "self_attn.v_proj.weight": normal(kv_heads * head_dim, hidden, std=0.2),
            p + "self_attn.o_proj.weight": normal(hidden, heads * head_dim, std=0.2),
            p + "mlp.gate_proj.weight": normal(intermediate, hidden, std=0.2),
            p + "mlp.up_proj.weight": normal(intermediate, hidden, std=0.2),
            p + "mlp.down_proj.weight": normal(hidden, intermediate, std=0.2),
            p + "input_layernorm.weight": np.ones(hidden, np.float32),
            p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
        }
    tensors["model.norm.weight"] = np.ones(hidden, np.float32)
    # Untied and random: tied embeddings on a random model mostly echo the last token.
    head = normal(vocab, hidden, std=1.0)
    # Quiet the rows of single bytes and of BOS/<|im_start|>, so the nonsense comes out as
    # whole words (merged tokens) and valid UTF-8 rather than stray bytes.
    head[quiet] *= 0.05
    tensors["lm_head.weight"] = head
    return tensors


def _write_safetensors(path: pathlib.Path, tensors: dict[str, npt.NDArray[np.float32]], dtype: str) -> None:
    # The format: an 8-byte little-endian header length, a JSON header, then the raw tensors.
    tag, np_type = _DTYPES[dtype]
    header: dict[str, object] = {"__metadata__": {"format": "mlx"}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name].astype(np_type)).tobytes()
        header[name] = {"dtype": tag, "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for blob in blobs:
            handle.write(blob)


def write_tiny_mlx(
    folder: pathlib.Path,
    *,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    vocab_size: int = 512,
    max_position: int = 2048,
    chat_template: str | None = CHAT_TEMPLATE,
    dtype: str = "float16",
) -> pathlib.Path:
    """Writes the model folder (created if needed, files replaced) and returns it."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden ({hidden}) must divide by heads ({heads}), and heads by kv_heads ({kv_heads})")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_json = _tokenizer_json(seed, vocab_size)
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    added = {t["content"]: t["id"] for t in json.loads(tokenizer_json)["added_tokens"]}
    n_vocab = max([*vocab.values(), *added.values()]) + 1
    (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    tokenizer_config: dict[str, object] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": True,
        "model_max_length": max_position,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        tokenizer_config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}, indent=2))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": n_vocab,
        "max_position_embeddings": max_position,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": added[BOS],
        # A chat turn ends at <|im_end|>; a plain completion at </s>.
        "eos_token_id": [added[EOS], added[IM_END]],
        "torch_dtype": dtype,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tensors = _tensors(
        np.random.default_rng(seed),
        vocab=n_vocab,
        quiet=sorted({i for t, i in vocab.items() if len(t) == 1} | {added[BOS], added[IM_START]}),
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
    )
    _write_safetensors(folder / "model.safetensors", tensors, dtype)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=pathlib.Path, help="output folder (created; its model files are replaced)")
    parser.add_argument("--seed", type=int, default=0, help="weights and tokenizer corpus seed (default 0)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers (default 2)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--kv-heads", type=int, default=2, help="key/value heads (default 2)")
    parser.add_argument("--intermediate", type=int, default=128, help="MLP size (default 128)")
    parser.add_argument("--vocab", type=int, default=512, help="BPE vocabulary size to train (default 512)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float16", help="weight type (default float16)")
    parser.add_argument("--no-chat-template", action="store_true", help="leave the chat template out (a base model)")
    args = parser.parse_args(argv)
    try:
        folder = write_tiny_mlx(
            args.out,
            seed=args.seed,
            hidden=args.hidden,
            layers=args.layers,
            heads=args.heads,
            kv_heads=args.kv_heads,
            intermediate=args.intermediate,
            vocab_size=args.vocab,
            chat_template=None if args.no_chat_template else CHAT_TEMPLATE,
            dtype=args.dtype,
        )
    except (ValueError, OSError) as exc:
        print(f"make_tiny_mlx: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
