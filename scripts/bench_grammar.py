#!/usr/bin/env python3
"""What checking a grammar after the chain saves: one-slot greedy decoding of SmolLM2-135M-Instruct
under a JSON schema, the grammar checked after the chain picks (BatchedLlama's path) against the
grammar masking the whole vocabulary first (grammar_first=True, llama-cpp-python's Llama's way),
and unconstrained, alternating in one process so a shared machine's load falls on all of them.

Prints decode tokens/s (the prompt's evaluation left out) per run and the median of each, and
whether the two constrained paths wrote the same text.

    python scripts/bench_grammar.py                   # 200 tokens, 3 rounds, 2 threads
    python scripts/bench_grammar.py --tokens 400 --rounds 5 --threads 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from hostler.schemas import ChatMessage, LoadParams, SamplingParams
from hostler.worker.engines.llama_batch import BatchedLlama, SequenceRequest
from hostler.worker.models.fetch import SMOLLM2, fetch

# Enough required items that greedy decoding cannot close the reply before max_tokens.
SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "country": {"type": "string", "maxLength": 30},
            "population": {"type": "integer"},
        },
        "required": ["city", "country", "population"],
        "additionalProperties": False,
    },
    "minItems": 40,
}
ASK = "List the forty largest cities of the world as JSON, with country and population."


def decode(
    engine: BatchedLlama, tokens: list[int], stops: tuple[str, ...], params: SamplingParams
) -> tuple[float, str]:
    """Decode tokens/s after the first token (which comes with the prompt's evaluation), and the text."""
    engine.submit(SequenceRequest(tokens, params, stops))
    text, start, first, done = "", 0.0, 0, False
    while not done:
        for out in engine.step():
            text += out.piece
            if out.completion_tokens >= 1 and not first:
                start, first = time.perf_counter(), out.completion_tokens
            if out.finish_reason is not None:
                done = True
                generated = out.completion_tokens - first
    return generated / (time.perf_counter() - start), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    path = fetch(SMOLLM2, quiet=True)
    load = LoadParams(n_ctx=2048, n_parallel=1, n_threads=args.threads)
    engines = {"after": BatchedLlama(path, load), "first": BatchedLlama(path, load, grammar_first=True)}
    engines["plain"] = engines["after"]
    constrained = SamplingParams(max_tokens=args.tokens, temperature=0, json_schema=SCHEMA)
    plain = SamplingParams(max_tokens=args.tokens, temperature=0)
    rates: dict[str, list[float]] = {name: [] for name in engines}
    texts: dict[str, str] = {}
    try:
        tokens, stops = engines["after"].chat_tokens([ChatMessage(role="user", content=ASK)])
        for round_ in range(args.rounds):
            for name, engine in engines.items():
                rate, text = decode(engine, tokens, stops, plain if name == "plain" else constrained)
                rates[name].append(rate)
                texts[name] = text
                print(f"round {round_ + 1} {name:>5}: {rate:6.2f} tokens/s", flush=True)
    finally:
        engines["after"].close()
        engines["first"].close()
    for name, values in rates.items():
        print(f"median {name:>5}: {statistics.median(values):6.2f} tokens/s over {len(values)} runs")
    print(f"after / first: {statistics.median(rates['after']) / statistics.median(rates['first']):.2f}x")
    print("same constrained text:", texts["after"] == texts["first"])
    print("constrained text starts:", texts["after"][:160])


if __name__ == "__main__":
    main()
