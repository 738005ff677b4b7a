#!/usr/bin/env python3
"""Embeddings through hostler against llama-cpp-python in-process, on SmolLM2-135M-Instruct.

Embeds the same generated texts (a corpus of sentences of 5 to 60 words) three ways in one run:
llama-cpp-python's Llama(embedding=True, pooling mean).embed() in-process, hostler's
client.embed() in jobs of --per-job texts through `hostler up` (Redis, one worker), and the
same jobs while --generations chat generations run in that worker. Prints texts/s for each,
the smallest cosine between hostler's and llama-cpp-python's vectors, the worker's RSS
before and after, and how long the generations' tokens took while embedding jobs ran.

Usage::

    python scripts/bench_embeddings.py [--texts 512] [--per-job 64] [--generations 4]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psutil
from hostler.worker.embedded_redis import EmbeddedRedis
from hostler.worker.models.fetch import SMOLLM2, fetch
from up_stack import start_stack, stop_stack

MODEL = "smollm2-135m"
WORDS = (
    "the a report quarter sales rain umbrella city river mountain data model engine token queue worker "
    "memory context vector search index query answer question summary document page table figure cost"
).split()


def corpus(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))).capitalize() + "." for _ in range(n)]


def in_process(path: Path, texts: Sequence[str]) -> tuple[float, list[list[float]]]:
    import llama_cpp
    from hostler.worker.engines.llama_cpu import safe_llama_defaults

    with safe_llama_defaults():
        llm = llama_cpp.Llama(
            model_path=str(path), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, n_ctx=2048,
            verbose=False,
        )  # fmt: skip
    try:
        started = time.monotonic()
        vectors = [llm.embed(text, normalize=True) for text in texts]
        return time.monotonic() - started, vectors
    finally:
        llm.close()


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--per-job", type=int, default=64)
    parser.add_argument("--generations", type=int, default=4)
    args = parser.parse_args(argv)
    path = fetch(SMOLLM2, quiet=True)
    texts = corpus(args.texts)
    print(f"load average {psutil.getloadavg()[0]:.2f} on {psutil.cpu_count()} CPUs", flush=True)
    inproc_s, reference = in_process(path, texts)
    print(f"in-process: {len(texts) / inproc_s:.1f} texts/s", flush=True)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(EmbeddedRedis())
        models = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hostler-bench-embed-")))
        (models / f"{MODEL}.gguf").symlink_to(path)
        up = start_stack(server.url, models, models / "up.log", client_timeout=600)
        stack.callback(stop_stack, up)
        client = up.client
        client.count_tokens(MODEL, "warm up")
        pid = next(w.pid for w in client.status().workers if w.model == MODEL)
        rss_before = psutil.Process(pid).memory_info().rss
        jobs = [texts[i : i + args.per_job] for i in range(0, len(texts), args.per_job)]

        def embed_all() -> tuple[float, list[list[float]]]:
            started = time.monotonic()
            vectors = [v for job in jobs for v in client.embed(MODEL, job).vectors]
            return time.monotonic() - started, vectors

        alone_s, vectors = embed_all()
        rss_after = psutil.Process(pid).memory_info().rss
        worst = min(cosine(a, b) for a, b in zip(vectors, reference, strict=True))
        print(f"hostler, {args.per_job} texts a job: {len(texts) / alone_s:.1f} texts/s", flush=True)

        gaps: list[float] = []

        def generate(i: int) -> None:
            last = time.monotonic()
            for _ in client.stream(MODEL, f"Write a long story number {i}.", max_tokens=10_000, temperature=0.7):
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                if done.is_set():
                    break

        done = threading.Event()
        threads = [threading.Thread(target=generate, args=(i,)) for i in range(args.generations)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        gaps.clear()
        busy_s, _ = embed_all()
        done.set()
        for thread in threads:
            thread.join(60)
    rate = len(texts) / busy_s
    print(f"hostler, with {args.generations} generations running: {rate:.1f} texts/s; their tokens came every "
          f"{np.median(gaps) * 1000:.0f} ms (median), {np.percentile(gaps, 99) * 1000:.0f} ms (p99), "
          f"{max(gaps) * 1000:.0f} ms (max)")  # fmt: skip
    print(f"hostler / in-process: {inproc_s / alone_s:.2f}; smallest cosine to llama-cpp-python: {worst:.6f}")
    print(f"worker RSS: {rss_before / 2**20:.0f} MiB before, {rss_after / 2**20:.0f} MiB after the embedding jobs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
