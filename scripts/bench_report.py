"""The benchmark's records and report: per-pair timings, summaries, the tables it prints.

Split from bench_queue.py so that file holds only the measuring.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import llama_cpp
import psutil
from bench_stack import N_CTX, OTHER, PROMPTS, SEED


@dataclass
class Run:
    ttft_s: float
    total_s: float
    text: str
    # Queued path only: until client.stream() returned, i.e. subscribed and enqueued.
    submit_s: float = 0.0


@dataclass
class Pair:
    prompt_index: int
    round: int
    inproc: Run
    queued: Run
    inproc_tokens: int
    queued_tokens: int
    match_reference: bool
    match_streams: bool
    queued_cpu: dict[str, float]
    inproc_cpu_s: float
    # CPU that programs other than this benchmark used during the pair, per second of it.
    other_share: float


@dataclass
class ModelBench:
    model: str
    n_threads: int
    n_threads_batch: int
    queued_load_s: float
    inproc_load_s: float
    pairs: list[Pair] = field(default_factory=list)
    reference_tokens: dict[int, int] = field(default_factory=dict)
    retried: int = 0


@dataclass
class CountBench:
    label: str
    jobs: int
    wall_s: float
    cpu: dict[str, float]
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.jobs / self.wall_s if self.wall_s > 0 else float("nan")


def p95(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


@dataclass
class ModelSummary:
    model: str
    runs: int
    inproc_tps: float
    queued_tps: float
    ratio: float
    paired_ratio_median: float
    inproc_ttft_ms: float
    queued_ttft_ms: float
    added_ttft_median_ms: float
    added_ttft_p95_ms: float
    submit_median_ms: float
    matched: int
    streams_matched: int
    tokens_per_run: float
    cpu_ms_per_queued_job: dict[str, float]
    cpu_ms_per_inproc_job: float
    threads: str
    noisy: int
    retried: int
    other_share_mean: float


def summarize(bench: ModelBench, noise_limit: float) -> ModelSummary:
    pairs = bench.pairs
    in_tok = sum(p.inproc_tokens for p in pairs)
    q_tok = sum(p.queued_tokens for p in pairs)
    inproc_tps = in_tok / sum(p.inproc.total_s for p in pairs)
    queued_tps = q_tok / sum(p.queued.total_s for p in pairs)
    paired = [
        (p.queued_tokens / p.queued.total_s) / (p.inproc_tokens / p.inproc.total_s)
        for p in pairs
        if p.inproc_tokens and p.queued_tokens
    ]
    added = [(p.queued.ttft_s - p.inproc.ttft_s) * 1e3 for p in pairs]
    cpu_names = sorted(pairs[0].queued_cpu)
    return ModelSummary(
        model=bench.model,
        runs=len(pairs),
        inproc_tps=inproc_tps,
        queued_tps=queued_tps,
        ratio=queued_tps / inproc_tps,
        paired_ratio_median=statistics.median(paired) if paired else float("nan"),
        inproc_ttft_ms=statistics.median(p.inproc.ttft_s for p in pairs) * 1e3,
        queued_ttft_ms=statistics.median(p.queued.ttft_s for p in pairs) * 1e3,
        added_ttft_median_ms=statistics.median(added),
        added_ttft_p95_ms=p95(added),
        submit_median_ms=statistics.median(p.queued.submit_s for p in pairs) * 1e3,
        matched=sum(p.match_reference for p in pairs),
        streams_matched=sum(p.match_streams for p in pairs),
        tokens_per_run=q_tok / len(pairs),
        cpu_ms_per_queued_job={n: 1e3 * statistics.fmean(p.queued_cpu[n] for p in pairs) for n in cpu_names},
        cpu_ms_per_inproc_job=1e3 * statistics.fmean(p.inproc_cpu_s for p in pairs),
        threads=f"{bench.n_threads}/{bench.n_threads_batch}",
        noisy=sum(p.other_share > noise_limit for p in pairs),
        retried=bench.retried,
        other_share_mean=statistics.fmean(p.other_share for p in pairs),
    )


def print_match_table(bench: ModelBench, n_prompts: int) -> None:
    for index in range(n_prompts):
        runs = [p for p in bench.pairs if p.prompt_index == index]
        ok = sum(p.match_reference for p in runs)
        verdict = "MATCH" if ok == len(runs) else "MISMATCH"
        prompt = PROMPTS[index % len(PROMPTS)].replace("\n", " ")[:50]
        print(
            f"  {bench.model} prompt {index + 1} {verdict} ({ok}/{len(runs)} runs, "
            f"{bench.reference_tokens.get(index, 0)} generated tokens): {prompt!r}"
        )
        for p in runs:
            if not p.match_reference:
                print(f"    round {p.round} queued: {p.queued.text[:120]!r}")


def print_summary(
    summaries: list[ModelSummary], counts: list[CountBench], args: argparse.Namespace, argv: Sequence[str]
) -> None:
    print("\n## hostler queue vs in-process llama-cpp-python\n")
    print(
        f"{_machine()}; max_tokens={args.max_tokens}, temperature 0, seed {SEED}, n_ctx {N_CTX}, "
        f"{args.prompts} prompts x {args.repeats} rounds\n"
    )
    if summaries:
        print(
            "| model | in-process tok/s | queued tok/s | queued/in-process | per-prompt ratio, median "
            "| TTFT in-process ms | added TTFT median ms | added TTFT p95 ms | temp-0 text equal |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in summaries:
            print(
                f"| {s.model} | {s.inproc_tps:.1f} | {s.queued_tps:.1f} | {s.ratio:.3f} | {s.paired_ratio_median:.3f} "
                f"| {s.inproc_ttft_ms:.1f} | {s.added_ttft_median_ms:+.1f} | {s.added_ttft_p95_ms:+.1f} "
                f"| {s.matched}/{s.runs} |"
            )
        threads = sorted({s.threads for s in summaries})
        print(f"\nThreads on both sides (n_threads/n_threads_batch): {', '.join(threads)}. Other programs:", end="")
        print(
            ";".join(
                f" {s.model} {s.other_share_mean:.0%} of a core on average, {s.noisy}/{s.runs} pairs above "
                f"{args.noise_limit:.0%} after {s.retried} re-run(s)"
                for s in summaries
            )
            + "."
        )
    if counts:
        print(
            f"\n| token-count jobs, one {args.count_model} worker | jobs | wall s | jobs/s "
            "| CPU ms/job worker | client | redis | other programs |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for c in counts:
            per = {k: 1e3 * v / c.jobs for k, v in c.cpu.items()}
            label = f"{c.label}, {c.errors} failed" if c.errors else c.label
            print(
                f"| {label} | {c.jobs} | {c.wall_s:.2f} | {c.rate:.0f} | {per.get('worker', 0):.3f} "
                f"| {per.get('bench', 0):.3f} | {per.get('redis', 0):.3f} | {per.get(OTHER, 0):.3f} |"
            )
    print(f"\nReproduce: {shlex.join([sys.executable.split('/')[-1], 'scripts/bench_queue.py', *argv])}")


def print_details(summaries: list[ModelSummary]) -> None:
    print("\nwhere the time goes (times are medians over runs; CPU is the mean per job, in ms):")
    for s in summaries:
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in s.cpu_ms_per_queued_job.items())
        print(
            f"  {s.model}: {s.tokens_per_run:.0f} tokens/run; TTFT in-process {s.inproc_ttft_ms:.1f} ms, "
            f"queued {s.queued_ttft_ms:.1f} ms (client.stream() returns after {s.submit_median_ms:.1f} ms); "
            f"in-process CPU {s.cpu_ms_per_inproc_job:.0f}, queued CPU {cpu}; "
            f"in-process stream text == queued text in {s.streams_matched}/{s.runs}"
        )


def _machine() -> str:
    return (
        f"{platform.machine()} {psutil.cpu_count(logical=True)} CPUs, Python {platform.python_version()}, "
        f"llama-cpp-python {llama_cpp.__version__}"
    )
