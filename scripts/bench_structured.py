#!/usr/bin/env python3
"""What structured output and logprobs cost: one BatchedLlama (SmolLM2-135M-Instruct), the same
chats run C at a time plain, under a JSON schema, and with logprobs, in one process.

Prints generated tokens per second for each, its ratio to plain, and how many constrained replies
parsed and validated. The schema's strings are bounded, so every reply can close within max_tokens.

    python scripts/bench_structured.py                    # 16 chats, 8 at a time, 96 tokens each
    python scripts/bench_structured.py --chats 32 --top 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostler.schemas import ChatMessage, LoadParams, SamplingParams  # noqa: E402
from hostler.worker.engines.llama_batch import BatchedLlama, SequenceRequest  # noqa: E402
from hostler.worker.models.fetch import SMOLLM2, fetch  # noqa: E402

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "country": {"type": "string", "maxLength": 30},
        "population": {"type": "integer"},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
    },
    "required": ["city", "country", "population", "landmarks"],
    "additionalProperties": False,
}
CITIES = ["Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Delhi", "Quito", "Rome"]


def run(llama: BatchedLlama, prompts: list[list[int]], params: SamplingParams, at_once: int) -> tuple[float, list[str]]:
    """Seconds for all prompts, at most at_once in flight, and their texts in order."""
    texts = [""] * len(prompts)
    waiting = list(enumerate(prompts))
    running: dict[int, int] = {}
    tokens = 0
    start = time.perf_counter()
    while waiting or running:
        while waiting and len(running) < at_once:
            index, prompt = waiting.pop(0)
            running[llama.submit(SequenceRequest(tokens=prompt, params=params))] = index
        for out in llama.step():
            texts[running[out.seq]] += out.piece
            if out.finish_reason is not None:
                tokens += out.completion_tokens
                del running[out.seq]
    return tokens / (time.perf_counter() - start), texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--top", type=int, default=5, help="top_logprobs for the logprobs run")
    args = parser.parse_args()
    llama = BatchedLlama(fetch(SMOLLM2, quiet=True), LoadParams(n_ctx=1024, n_parallel=args.concurrency))
    prompts = []
    for i in range(args.chats):
        city = CITIES[i % len(CITIES)]
        question = f"Describe {city} in JSON: city, country, population, landmarks."
        prompts.append(llama.chat_tokens([ChatMessage(role="user", content=question)])[0])
    base = SamplingParams(max_tokens=args.max_tokens, temperature=0.7, seed=1)
    cases = {
        "plain": base,
        "json_schema": base.model_copy(update={"json_schema": SCHEMA}),
        f"logprobs={args.top}": base.model_copy(update={"logprobs": args.top}),
    }
    print(f"SmolLM2-135M, {args.chats} chats, {args.concurrency} at a time, {args.max_tokens} tokens max; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")  # fmt: skip
    run(llama, prompts[:2], base, 2)  # warm up
    plain = 0.0
    for name, params in cases.items():
        rate, texts = run(llama, prompts, params, args.concurrency)
        plain = plain or rate
        line = f"{name:>14}: {rate:7.1f} tokens/s ({rate / plain:.2f}x plain)"
        if params.json_schema is not None:
            valid = 0
            for text in texts:
                try:
                    jsonschema.validate(json.loads(text), SCHEMA)
                    valid += 1
                except (ValueError, jsonschema.ValidationError):
                    pass
            line += f", {valid}/{len(texts)} replies valid"
        print(line)
    llama.close()


if __name__ == "__main__":
    main()
