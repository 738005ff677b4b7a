#!/usr/bin/env python3
"""Compare hostler's memory estimate of a GGUF model with what loading it really costs.

Run it in a fresh process: it imports llama.cpp and the engine first (their cost is part of a
worker before any model, not of the model), records the RSS, loads the model as a worker does
(LlamaSlots, n_parallel slots), runs one generation in every slot at once (a short prompt, 16
tokens, temperature 0), then one packed decode of an embedding job (whose context the estimate
counts; it is freed when the job ends), records the RSS again while that context is open,
and prints one JSON line:

    {"model", "n_ctx", "n_batch", "n_parallel",
     "estimate": {"weights", "kv_cache", "compute", "overhead", "kept_prompts", "total"},
     "measured_rss_increase", "error"}

where error = (estimate - measured) / measured. The kept prompts' budget (engines/kept_prompts.py)
is printed but left out of the total compared: the store fills only as prompts are cut from
their slots, and never holds more than that budget (tests/worker/engines/test_kept_prompts.py).

Usage::

    python scripts/measure_memory.py MODEL.gguf --n-ctx 2048 [--n-batch 512] [--n-parallel 8]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import llama_cpp  # noqa: F401  # imported before the baseline: it is not the model's memory
import psutil
from hostler.schemas import LoadParams, SamplingParams
from hostler.worker.engines.llama_slots import LlamaSlots
from hostler.worker.engines.protocol import GenerationRequest
from hostler.worker.memory.estimate import embedding_estimate, estimate_gguf

PROMPT = "Once upon a time, in a small village by the sea,"


def measure(path: Path, params: LoadParams) -> tuple[int, dict[str, int]]:
    """Bytes of RSS that loading the model, one generation and an embedding decode add, and what
    the embedding context alone added while open and left once closed."""
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    engine = LlamaSlots(path, params)
    request = GenerationRequest(params=SamplingParams(max_tokens=16, temperature=0.0), prompt=PROMPT)
    for _ in range(engine.n_slots):
        engine.start(request)
    while engine.step():
        pass
    generated = process.memory_info().rss
    # Enough texts for two packed decodes: after the first, the embedding context is open and full.
    task = engine.start_embedding([PROMPT] * 64, None)
    task.step()
    after = process.memory_info().rss
    task.close()
    embedding = {"open": after - generated, "after_close": process.memory_info().rss - generated}
    engine.close()
    return after - before, embedding


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model", type=Path, help="a .gguf file")
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--n-batch", type=int, default=LoadParams().n_batch)
    parser.add_argument("--n-parallel", type=int, default=LoadParams().n_parallel)
    args = parser.parse_args(argv)

    params = LoadParams(n_ctx=args.n_ctx, n_batch=args.n_batch, n_parallel=args.n_parallel)
    measured, embedding = measure(args.model, params)
    # Estimated after measuring, so reading the file leaves nothing in the baseline.
    found = estimate_gguf(args.model, params)
    report = {
        "model": args.model.stem,
        "n_ctx": params.n_ctx,
        "n_batch": params.n_batch,
        "n_parallel": params.n_parallel,
        "estimate": {
            "weights": found.weights_bytes,
            "kv_cache": found.kv_cache_bytes,
            "compute": found.compute_bytes,
            "overhead": found.overhead_bytes,
            "kept_prompts": found.kept_prompts_bytes,
            "total": found.total_bytes - found.kept_prompts_bytes,
        },
        "measured_rss_increase": measured,
        "embedding_context": {**embedding, "estimate": embedding_estimate(args.model, params)},
        "error": round((found.total_bytes - found.kept_prompts_bytes - measured) / measured, 4),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
