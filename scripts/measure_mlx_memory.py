#!/usr/bin/env python3
"""Compare what the controller reserves for an MLX model folder with what its worker holds.

The MLX counterpart of measure_memory.py. Run it in a fresh process: it imports what a
worker imports, loads the folder as a worker does (MlxSlots, --slots of them, 1 by default),
runs one generation per slot at once (16 tokens, temperature 0) on a short prompt, or with
--fill on prompts that fill each slot's context (mlx-lm grows its KV cache as the context
fills, so only then is all of the estimated KV cache touched), and prints one JSON line:

    {"model", "n_ctx", "n_batch", "slots", "prompt_tokens", "estimate": {...}, "need",
     "measured_rss", "peak_rss", "error", "peak_error"}

where need = the estimate (without the kept prompts' budget: they are off here, a bound
mlx-lm's LRUPromptCache keeps, not a size) + the controller's worker base (a llama.cpp worker's own RSS: the
MLX runtime's extra is in the estimate), measured_rss = the process's whole RSS after the
generations, peak_rss its highest RSS meanwhile (mlx-lm frees each prefill chunk's buffers, so
what a reservation must cover is the peak), error = (need - measured) / measured and
peak_error = (need - peak) / peak.

Usage::

    python scripts/measure_mlx_memory.py FOLDER --n-ctx 2048 [--n-batch 512] [--slots N] [--fill]
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
from hostler.worker.engines.mlx_batch import MlxSlots
from hostler.worker.engines.protocol import GenerationRequest
from hostler.worker.memory.estimate import WORKER_BASE_BYTES, estimate_mlx

PROMPT = "Once upon a time, in a small village by the sea,"


def measure(path: Path, params: LoadParams, fill: bool) -> tuple[int, int]:
    """The process's RSS after loading the model and a generation in every slot at once, and
    the prompt tokens of one."""
    engine = MlxSlots(path, params)
    prompt = PROMPT
    if fill:
        # Repeat the sentence until the prompt leaves about 16 tokens for the generation.
        sentence = " " + PROMPT
        per = engine.count_tokens(PROMPT * 8) / 8
        prompt = sentence * int((params.n_ctx - 24) / per)
        while engine.count_tokens(prompt) > params.n_ctx - 20:
            prompt = prompt[: -len(sentence)]
    sampling = SamplingParams(max_tokens=16, temperature=0.0)
    prompt_tokens = 0
    # Each slot's prompt differs in its first word, as different jobs' would.
    for slot in range(params.n_parallel):
        engine.start(GenerationRequest(params=sampling, prompt=f"{slot}.{prompt}"))
    while engine.free_slots < params.n_parallel:
        for output in engine.step():
            prompt_tokens = output.prompt_tokens
    mx.synchronize()
    gc.collect()
    rss = psutil.Process().memory_info().rss
    engine.close()
    return rss, prompt_tokens


def peak_rss() -> int:
    """The highest RSS of this program so far: VmHWM, not getrusage's ru_maxrss, which a process
    started from a large one (a test run) inherits across fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM (Linux only)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model", type=Path, help="an MLX model folder")
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--n-batch", type=int, default=LoadParams().n_batch)
    parser.add_argument("--slots", type=int, default=1, help="n_parallel: generations at once (default 1)")
    parser.add_argument("--fill", action="store_true", help="a prompt that fills the context")
    args = parser.parse_args(argv)

    params = LoadParams(n_ctx=args.n_ctx, n_batch=args.n_batch, n_parallel=args.slots)
    # Kept prompt caches off: they are a bound mlx-lm's LRUPromptCache holds them to, not a size
    # to measure, and would otherwise hold the ended sequences' caches when the RSS is read.
    measured, prompt_tokens = measure(args.model, params.model_copy(update={"cache_ram_mib": 0}), args.fill)
    peak = peak_rss()
    found = estimate_mlx(args.model, params)
    need = found.total_bytes - found.kept_prompts_bytes + WORKER_BASE_BYTES
    report = {
        "model": args.model.name,
        "n_ctx": params.n_ctx,
        "n_batch": params.n_batch,
        "slots": params.n_parallel,
        "prompt_tokens": prompt_tokens,
        "estimate": {
            "weights": found.weights_bytes,
            "kv_cache": found.kv_cache_bytes,
            "compute": found.compute_bytes,
            "overhead": found.overhead_bytes,
            "kept_prompts": found.kept_prompts_bytes,
            "total": found.total_bytes - found.kept_prompts_bytes,
        },
        "need": need,
        "measured_rss": measured,
        "peak_rss": peak,
        "error": round((need - measured) / measured, 4),
        "peak_error": round((need - peak) / peak, 4),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
