#!/usr/bin/env python3
"""Per-step timings of the continuous-batching engine, robust to a busy machine.

Whole-run tokens/s on a shared machine measure the other programs as much as the engine.
This times single steps instead and reports a low percentile (p10) and the median of each
kind, per n_parallel and KV cache layout (SmolLM2-135M-Instruct):

- decode: every slot generating, one token each; tokens/s = slots / step time;
- admission: one slot's sequence replaced by a new 40-token prompt, the others generating
  (one llama_decode with both; a split KV cache runs it as two physical batches);
- prefill: one 512-token chunk, one slot.

    python scripts/bench_llama_steps.py                      # n_parallel 1 2 4 8 16, and 8u 16u (unified)
    python scripts/bench_llama_steps.py --configs 8 8u --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from hostler.schemas import LoadParams, SamplingParams
from hostler.worker.engines.llama_batch import BatchedLlama, SequenceRequest
from hostler.worker.models.fetch import SMOLLM2, fetch

WORDS = "the king said that a queen was in the city and every river ran to the sea under a blue sky".split()


def p10(values: list[float]) -> float:
    return sorted(values)[max(0, len(values) // 10 - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["1", "2", "4", "8", "16", "8u", "16u"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="decode steps per round")
    parser.add_argument("--admissions", type=int, default=12, help="admission steps per round")
    args = parser.parse_args()
    path = fetch(SMOLLM2, quiet=True)
    rng = random.Random(1)

    def prompt(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    decode: dict[str, list[float]] = {c: [] for c in args.configs}
    admit: dict[str, list[float]] = {c: [] for c in args.configs}
    prefill: list[float] = []
    sampling = SamplingParams(max_tokens=100_000, temperature=0.8, seed=1)
    for _ in range(args.rounds):
        for config in args.configs:
            slots = int(config.rstrip("u"))
            engine = BatchedLlama(
                path, LoadParams(n_parallel=slots, n_threads=args.threads), kv_unified=config.endswith("u")
            )
            try:
                handles = [
                    engine.submit(SequenceRequest(engine.prompt_tokens(prompt(30)), sampling)) for _ in range(slots)
                ]
                engine.step()
                for _ in range(args.steps):
                    start = time.perf_counter()
                    outputs = engine.step()
                    if len(outputs) == slots:
                        decode[config].append((time.perf_counter() - start) / slots)
                for _ in range(args.admissions):
                    engine.cancel(handles.pop(0))
                    handles.append(engine.submit(SequenceRequest(engine.prompt_tokens(prompt(40)), sampling)))
                    start = time.perf_counter()
                    engine.step()
                    admit[config].append(time.perf_counter() - start)
                    engine.step()
                    engine.step()
            finally:
                engine.close()
        engine = BatchedLlama(path, LoadParams(n_parallel=1, n_threads=args.threads))
        try:
            for _ in range(3):
                tokens = engine.prompt_tokens(prompt(700))[:513]
                engine.submit(SequenceRequest(tokens, SamplingParams(max_tokens=1, temperature=0)))
                start = time.perf_counter()
                engine.step()  # the first 512 prompt tokens
                prefill.append(512 / (time.perf_counter() - start))
                engine.step()
                rng.shuffle(WORDS)  # the next prompt shares no prefix worth caching
        finally:
            engine.close()
    for config in args.configs:
        d, m = decode[config], admit[config]
        print(
            f"{config:>4}: decode {1 / p10(d):6.1f} tok/s p10 (median {1 / statistics.median(d):6.1f})"
            f"  admission step {p10(m) * 1000:6.1f} ms p10 (median {statistics.median(m) * 1000:6.1f})",
            flush=True,
        )
    print(f"prefill: {max(prefill):.0f} tok/s best of {len(prefill)} 512-token chunks")


if __name__ == "__main__":
    main()
