#!/usr/bin/env python3
"""Compare hostler's memory estimate of an MLX model folder with what loading it really costs.

The MLX counterpart of measure_memory.py. Run it in a fresh process: it imports mlx-lm and
the engine first (part of a worker before any model), records the RSS, loads the folder with
MlxEngine, runs one generation (16 tokens, temperature 0) on a short prompt, or with
--fill on a prompt that fills the context (mlx-lm grows its KV cache as the context fills,
so only then is all of the estimated KV cache touched), records the RSS again and prints
one JSON line:

    {"model", "n_ctx", "n_batch", "prompt_tokens", "estimate": {...}, "measured_rss_increase", "error"}

where error = (estimate - measured) / measured.

Usage::

    python scripts/measure_mlx_memory.py FOLDER --n-ctx 2048 [--n-batch 512] [--fill]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import mlx.core as mx
import mlx_lm  # noqa: F401  # imported before the baseline: it is not the model's memory
import mlx_lm.generate  # noqa: F401
import mlx_lm.sample_utils  # noqa: F401
import psutil
from hostler.schemas import LoadParams, SamplingParams
from hostler.worker.memory import estimate_mlx
from hostler.worker.mlx_engine import MlxEngine

PROMPT = "Once upon a time, in a small village by the sea,"


def measure(path: Path, params: LoadParams, fill: bool) -> tuple[int, int]:
    """Bytes of RSS that loading the model and one generation add, and the prompt's tokens."""
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    engine = MlxEngine(path, params)
    prompt = PROMPT
    if fill:
        # Repeat the sentence until the prompt leaves about 16 tokens for the generation.
        sentence = " " + PROMPT
        per = engine.count_tokens(PROMPT * 8) / 8
        prompt = sentence * int((params.n_ctx - 24) / per)
        while engine.count_tokens(prompt) > params.n_ctx - 17:
            prompt = prompt[: -len(sentence)]
    generation = engine.complete(prompt, SamplingParams(max_tokens=16, temperature=0.0), lambda: False)
    "".join(generation)
    mx.synchronize()
    after = process.memory_info().rss
    engine.close()
    return after - before, generation.prompt_tokens


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model", type=Path, help="an MLX model folder")
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--n-batch", type=int, default=LoadParams().n_batch)
    parser.add_argument("--fill", action="store_true", help="a prompt that fills the context")
    args = parser.parse_args(argv)

    params = LoadParams(n_ctx=args.n_ctx, n_batch=args.n_batch)
    measured, prompt_tokens = measure(args.model, params, args.fill)
    found = estimate_mlx(args.model, params)
    report = {
        "model": args.model.name,
        "n_ctx": params.n_ctx,
        "n_batch": params.n_batch,
        "prompt_tokens": prompt_tokens,
        "estimate": {
            "weights": found.weights_bytes,
            "kv_cache": found.kv_cache_bytes,
            "compute": found.compute_bytes,
            "overhead": found.overhead_bytes,
            "total": found.total_bytes,
        },
        "measured_rss_increase": measured,
        "error": round((found.total_bytes - measured) / measured, 4),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
