#!/usr/bin/env python3
"""Benchmark the continuous-batching engine (hostler.worker.engines.llama_batch) in-process.

Sends the one-sentence-summary chat requests of bench_gateway.py (SmolLM2-135M-Instruct,
temperature 0) straight to a BatchedLlama, C at a time, and prints for each setting the
generated tokens per second, steps, the time per step split into llama_decode, sampling
(the sequences' samplers: llama.cpp's chain in C, or numpy's argmax of the logits for a greedy
job with neutral penalties) and everything else (Python), and time to first token; then
the same requests one after another through llama-cpp-python's create_chat_completion.
It also counts how many batched texts equal their one-slot text, and whether a second run
of the same batch on a fresh engine gives the same texts.

    python scripts/bench_llama_batch.py                       # n_parallel 1 2 4 8 16, C = n_parallel
    python scripts/bench_llama_batch.py --slots 8 --concurrency 1 8
    python scripts/bench_llama_batch.py --kv split unified    # also llama.cpp's unified KV cache
    python scripts/bench_llama_batch.py --rounds 3            # best of three, order rotated

Each line also says how many cores other programs used meanwhile: on a shared machine that
is the noise of the figures.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import PASSAGES, messages  # noqa: E402
from hostler.schemas import ChatMessage, LoadParams, SamplingParams  # noqa: E402
from hostler.worker.engines.llama_batch import BatchedLlama, SequenceRequest  # noqa: E402
from hostler.worker.engines.llama_sampling import Candidates, SequenceSampler  # noqa: E402
from hostler.worker.engines.protocol import StepOutput  # noqa: E402
from hostler.worker.models.fetch import SMOLLM2, fetch  # noqa: E402


class TimedLib:
    """llama_cpp with llama_decode timed, and the time the engine's samplers took (drive())."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.decode_s = 0.0
        self.sample_s = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def llama_decode(self, ctx: Any, batch: Any) -> int:
        start = time.perf_counter()
        rc = int(self._lib.llama_decode(ctx, batch))
        self.decode_s += time.perf_counter() - start
        return rc


@dataclass
class Result:
    label: str
    seconds: float
    tokens: int
    steps: int = 0
    step_s: float = 0.0
    decode_s: float = 0.0
    sample_s: float = 0.0
    cached: int = 0
    prompt: int = 0
    ttft: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = (
            f"{self.label:<34} {self.tokens / self.seconds:7.1f} tok/s  {self.tokens:5d} tokens  {self.seconds:6.2f} s"
        )
        if self.steps:
            per = 1000 / self.steps
            other = self.step_s - self.decode_s - self.sample_s
            text += (
                f"  {self.steps:4d} steps: {self.step_s * per:5.1f} ms/step = decode {self.decode_s * per:5.1f}"
                f" + sample {self.sample_s * per:4.2f} + python {other * per:4.2f}"
            )
        if self.ttft:
            ttft = sorted(self.ttft)
            text += f"  ttft p50 {statistics.median(ttft) * 1000:5.0f} ms"
        if self.prompt:
            text += f"  cached {self.cached}/{self.prompt}"
        return text


def chats(count: int) -> list[list[ChatMessage]]:
    return [[ChatMessage.model_validate(m) for m in messages(PASSAGES[i % len(PASSAGES)])] for i in range(count)]


class Slots(Protocol):
    """What drive_slots needs of an engine: BatchedLlama and MlxSlots both have it."""

    @property
    def free_slots(self) -> int: ...

    def step(self) -> list[StepOutput]: ...


def drive_slots(engine: Slots, start: Callable[[int], int], count: int, concurrency: int, label: str) -> Result:
    """Runs requests 0..count-1 through engine, concurrency at a time (start(i) admits request i
    and returns its handle), each next one as soon as a slot is free."""
    texts = [""] * count
    started: dict[int, float] = {}
    live: dict[int, int] = {}
    pending = list(range(count))
    result = Result(label, 0.0, 0)
    begin = time.perf_counter()
    while pending or live:
        while pending and len(live) < concurrency and engine.free_slots:
            index = pending.pop(0)
            handle = start(index)
            live[handle] = index
            started[handle] = time.perf_counter()
        step_start = time.perf_counter()
        outputs = engine.step()
        now = time.perf_counter()
        result.step_s += now - step_start
        result.steps += 1
        for out in outputs:
            index = live[out.seq]
            if out.completion_tokens == 1 and out.seq in started:
                result.ttft.append(now - started.pop(out.seq))
            texts[index] += out.piece
            if out.finish_reason is not None:
                del live[out.seq]
                result.tokens += out.completion_tokens
                result.cached += out.cached_tokens
                result.prompt += out.prompt_tokens
    result.seconds = time.perf_counter() - begin
    result.texts = texts
    return result


def drive(engine: BatchedLlama, requests: Sequence[SequenceRequest], concurrency: int, label: str) -> Result:
    lib = TimedLib(engine._lib)
    engine._lib = lib
    sample = SequenceSampler.sample

    def timed_sample(sampler: SequenceSampler, ctx: Any, index: int, candidates: Candidates) -> int:
        start = time.perf_counter()
        try:
            return sample(sampler, ctx, index, candidates)
        finally:
            lib.sample_s += time.perf_counter() - start

    SequenceSampler.sample = timed_sample  # type: ignore[method-assign]
    try:
        result = drive_slots(engine, lambda i: engine.submit(requests[i]), len(requests), concurrency, label)
    finally:
        engine._lib = lib._lib
        SequenceSampler.sample = sample  # type: ignore[method-assign]
    result.decode_s, result.sample_s = lib.decode_s, lib.sample_s
    return result


def run_rounds(
    configs: Sequence[Hashable],
    run: Callable[[Hashable], Result],
    args: argparse.Namespace,
    *,
    solo: Callable[[Hashable], bool],
    reference: Hashable,
    reference_name: str,
) -> None:
    """Runs every config args.rounds times, the order rotated each round, printing each run (its
    texts against the first run of a config solo() picks and its own last run) and then the best of each
    against the reference config's."""
    best: dict[Hashable, Result] = {}
    last: dict[Hashable, list[str]] = {}
    solo_texts: list[str] | None = None
    for round_ in range(args.rounds):
        shift = round_ % len(configs)
        for config in [*configs[shift:], *configs[:shift]]:
            if args.quiet is not None:
                wait_quiet(args.quiet)
            result, others = other_cores(functools.partial(run, config))
            if solo(config) and solo_texts is None:
                solo_texts = result.texts
            line = f"[{round_ + 1}] {result.line()}  others {others:.2f} cores"
            if solo_texts is not None:
                same = sum(a == b for a, b in zip(result.texts, solo_texts, strict=True))
                line += f"  = one-slot text {same}/{len(solo_texts)}"
            if config in last:
                line += f"  = last run {sum(a == b for a, b in zip(result.texts, last[config], strict=True))}"
            last[config] = result.texts
            print(line, flush=True)
            if config not in best or result.tokens / result.seconds > best[config].tokens / best[config].seconds:
                best[config] = result
    print("best of each:")
    base = best.get(reference)
    for config in configs:
        result = best[config]
        line = f"  {result.label:<38} {result.tokens / result.seconds:7.1f} tok/s"
        if base is not None:
            line += f"  {result.tokens / result.seconds / (base.tokens / base.seconds):5.2f}x {reference_name}"
        print(line)


@dataclass(frozen=True)
class Config:
    slots: int  # 0: llama-cpp-python, sequential
    concurrency: int
    unified: bool = False

    @property
    def label(self) -> str:
        if not self.slots:
            return "llama-cpp-python sequential"
        kv = " unified" if self.unified else ""
        return f"batched n_parallel={self.slots} C={self.concurrency}{kv}"


def batched(path: Path, config: Config, conversations: list[list[ChatMessage]], args: argparse.Namespace) -> Result:
    params = LoadParams(n_ctx=args.n_ctx, n_parallel=config.slots, n_threads=args.threads)
    engine = BatchedLlama(path, params, kv_unified=config.unified)
    try:
        sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0)
        requests = []
        for conversation in conversations:
            tokens, stops = engine.chat_tokens(conversation)
            requests.append(SequenceRequest(tokens, sampling, stops))
        return drive(engine, requests, config.concurrency, config.label)
    finally:
        engine.close()


def sequential_llama_cpp(path: Path, conversations: list[list[ChatMessage]], args: argparse.Namespace) -> Result:
    from hostler.worker.engines.llama_cpu import safe_llama_defaults
    from llama_cpp import Llama

    threads = args.threads or len(os.sched_getaffinity(0))
    with safe_llama_defaults():
        llm = Llama(model_path=str(path), n_ctx=args.n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    try:
        result = Result("llama-cpp-python sequential", 0.0, 0)
        begin = time.perf_counter()
        for conversation in conversations:
            llm.reset()
            reply: Any = llm.create_chat_completion(
                [m.model_dump() for m in conversation],  # type: ignore[misc]
                max_tokens=args.max_tokens,
                temperature=0,
            )
            result.tokens += reply["usage"]["completion_tokens"]
            result.texts.append(reply["choices"][0]["message"]["content"] or "")
        result.seconds = time.perf_counter() - begin
        return result
    finally:
        llm.close()


def wait_quiet(limit: float, most: float = 300.0) -> float:
    """Waits (up to `most` seconds) until other programs use less than `limit` cores for a second."""
    deadline = time.monotonic() + most
    while True:
        busy, begin = _busy(), time.perf_counter()
        time.sleep(1.0)
        others = (_busy() - busy) / (time.perf_counter() - begin)
        if others < limit or time.monotonic() > deadline:
            return others


def other_cores(run: Callable[[], Result]) -> tuple[Result, float]:
    """Runs and returns the result and the CPU that other programs used meanwhile, in cores."""
    me = psutil.Process()
    busy = _busy()
    mine = sum(me.cpu_times()[:2])
    begin = time.perf_counter()
    result = run()
    wall = time.perf_counter() - begin
    others = (_busy() - busy) - (sum(me.cpu_times()[:2]) - mine)
    return result, max(0.0, others / wall)


def _busy() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="n_parallel values")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[], help="C values (default: C = n_parallel)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--kv", nargs="+", choices=["split", "unified"], default=["split"], help="KV cache layouts")
    parser.add_argument("--no-reference", action="store_true", help="skip sequential llama-cpp-python")
    parser.add_argument("--rounds", type=int, default=1, help="run everything this often, rotating the order")
    parser.add_argument(
        "--quiet", type=float, default=None, help="before each run, wait until other programs use fewer cores than this"
    )
    args = parser.parse_args()
    path = fetch(SMOLLM2, quiet=True)
    conversations = chats(args.requests)
    configs = [
        Config(slots, concurrency, kv == "unified")
        for kv in args.kv
        for slots in args.slots
        for concurrency in (args.concurrency or [slots])
    ]
    if not args.no_reference:
        configs.append(Config(0, 1))

    def run(config: Hashable) -> Result:
        assert isinstance(config, Config)
        if config.slots:
            return batched(path, config, conversations, args)
        return sequential_llama_cpp(path, conversations, args)

    def solo(config: Hashable) -> bool:
        return isinstance(config, Config) and config.slots == 1 and not config.unified

    run_rounds(configs, run, args, solo=solo, reference=Config(0, 1), reference_name="llama-cpp-python")


if __name__ == "__main__":
    main()
