#!/usr/bin/env python3
"""Compare what the controller reserves for an MLX model folder with what its worker holds.

The MLX counterpart of measure_memory.py. Run it in a fresh process: it imports what a
worker imports, loads the folder with MlxEngine, runs one generation (16 tokens,
temperature 0) on a short prompt, or with --fill on a prompt that fills the context
(mlx-lm grows its KV cache as the context fills, so only then is all of the estimated KV
cache touched), and prints one JSON line:

    {"model", "n_ctx", "n_batch", "prompt_tokens", "estimate": {...}, "need", "measured_rss", "error"}

where need = the estimate + the controller's worker base (a llama.cpp worker's own RSS: the
MLX runtime's extra is in the estimate), measured_rss = the process's whole RSS after the
generation, and error = (need - measured) / measured.

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

import hostler.worker.cli.main  # noqa: F401  # what a worker process imports
import hostler.worker.serving.worker  # noqa: F401
import mlx.core as mx
import psutil
from hostler.schemas import LoadParams, SamplingParams
from hostler.worker.engines.mlx import MlxEngine
from hostler.worker.memory.estimate import WORKER_BASE_BYTES, estimate_mlx

PROMPT = "Once upon a time, in a small village by the sea,"


def measure(path: Path, params: LoadParams, fill: bool) -> tuple[int, int]:
    """The process's RSS after loading the model and one generation, and the prompt's tokens."""
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
    gc.collect()
    rss = psutil.Process().memory_info().rss
    engine.close()
    return rss, generation.prompt_tokens


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
        "need": found.total_bytes + WORKER_BASE_BYTES,
        "measured_rss": measured,
        "error": round((found.total_bytes + WORKER_BASE_BYTES - measured) / measured, 4),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
