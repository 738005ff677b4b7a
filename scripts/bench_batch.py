"""Batch summarization benchmark: in-process llama-cpp-python vs hostler, one and two workers.

    .venv/bin/python scripts/bench_batch.py [--docs 24] [--max-tokens 64]

One run, SmolLM2-135M-Instruct, the same generated documents (temperature 0), five ways:
  in-process    a plain loop of create_chat_completion, one thread pinned to core 0;
  1 worker      hostler, one worker pinned to core 0 (taskset), one thread, through Client.map;
  2 workers     hostler, two workers pinned to cores 0 and 1, one thread each;
  one job at a time
                what a worker did by default before slots: one job after another, threads
                half the cores, no prompt kept from the job before (in-process, so without
                the queue's own cost: the comparison favours it);
  defaults      hostler, one worker with nothing set but the context (every core, 8 slots).
It prints documents per minute and the ratios the project targets: 1 worker >= 0.95x the
in-process loop, 2 workers >= 1.8x 1 worker, a worker with defaults >= 1.3x one job at a time.
The client and Redis run unpinned beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from bench_stack import PREFIX, HostReporter
from hostler import Client, CompletionResult
from hostler.schemas import Keys, LoadParams
from hostler.worker.control.host_agent import HostAgent, worker_command, worker_env
from hostler.worker.embedded_redis import EmbeddedRedis
from hostler.worker.engines.llama_cpu import safe_llama_defaults
from hostler.worker.models.fetch import SMOLLM2, fetch

MODEL = "sm"
# The same file again, loaded with nothing set but the context, as a user's first model.yaml.
DEFAULTS_MODEL = "sm-defaults"
# Jobs one worker runs at once by default (LoadParams.n_parallel).
IN_FLIGHT = LoadParams().n_parallel
HOST_ID = "bench-batch"
N_CTX = 2048
INSTRUCTION = "Summarize the following report in one sentence."
PLACES = ["Arden", "Brill", "Coldwater", "Dunmore", "Elsby", "Fairhaven", "Glenrock", "Harlow"]
GOODS = ["wheat", "barley", "wool", "timber", "cheese", "apples", "salt", "iron"]


def documents(n: int, seed: int = 11) -> list[str]:
    """n short reports of two to four paragraphs, the same for every run with the same seed."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        paragraphs = []
        for _ in range(rng.randint(2, 4)):
            place, good = rng.choice(PLACES), rng.choice(GOODS)
            paragraphs.append(
                f"In {rng.randint(1850, 1950)} the town of {place} produced {rng.randint(10, 900)} tons of {good}. "
                f"The council spent the income on the {rng.choice(['bridge', 'school', 'harbour', 'library'])}."
            )
        docs.append(f"Report {i}.\n\n" + "\n\n".join(paragraphs))
    return docs


def messages(doc: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": doc}]


@dataclass
class Phase:
    name: str
    seconds: float
    docs: int
    tokens: int
    texts: list[str]

    @property
    def docs_per_min(self) -> float:
        return 60.0 * self.docs / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def in_process(path: Path, docs: Sequence[str], max_tokens: int, *, one_job_at_a_time: bool = False) -> Phase:
    """The loop pinned to core 0; or, one_job_at_a_time, the loop as a worker ran it by default
    before slots: unpinned, threads half the usable cores, every prompt evaluated whole."""
    import llama_cpp

    before = os.sched_getaffinity(0)
    threads = max(1, len(before) // 2) if one_job_at_a_time else 1
    if not one_job_at_a_time:
        os.sched_setaffinity(0, {0})
    try:
        with safe_llama_defaults():
            # flash_attn=True: the workers leave it to llama.cpp, which turns it on on a CPU.
            llm = llama_cpp.Llama(
                str(path), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, flash_attn=True, verbose=False
            )
        llm.create_chat_completion(messages(docs[0]), max_tokens=4, temperature=0)  # warm-up
        texts, tokens = [], 0
        started = time.perf_counter()
        for doc in docs:
            if one_job_at_a_time:
                llm.reset()  # the old worker kept no prefix from the job before (cache_prompt off)
            out = llm.create_chat_completion(messages(doc), max_tokens=max_tokens, temperature=0)
            texts.append(str(out["choices"][0]["message"]["content"]))  # type: ignore[index]
            tokens += int(out["usage"]["completion_tokens"])  # type: ignore[index]
        seconds = time.perf_counter() - started
        llm.close()
    finally:
        os.sched_setaffinity(0, before)
    name = "in-process, 1 core"
    if one_job_at_a_time:
        name = f"one job at a time, {threads} thread{'s' if threads > 1 else ''}"
    return Phase(name, seconds, len(docs), tokens, texts)


def through_hostler(
    url: str, models_dir: Path, cores: Sequence[int], docs: Sequence[str], max_tokens: int, *, model: str = MODEL
) -> Phase:
    """Workers pinned one to each of cores; with no cores, one worker of model left unpinned."""
    keys = Keys(PREFIX)
    connection = redis.Redis.from_url(url, socket_timeout=30)
    connection.flushdb()
    workers: list[subprocess.Popen[bytes]] = []
    agent = HostAgent(connection=connection, keys=keys, redis_url=url, models_dir=models_dir, host=HOST_ID)
    agent.rescan()
    try:
        with HostReporter(agent), Client(url, prefix=PREFIX, timeout=1800) as client:
            pins = [["taskset", "-c", str(core)] for core in cores] or [[]]
            for pin in pins:
                command = [*pin, *worker_command(model, models_dir, PREFIX, HOST_ID)]
                workers.append(
                    subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=worker_env(url))
                )
            _wait_workers(client, model, len(pins))
            # Warm-up: every worker loads the model (n_threads from model.yaml) before timing.
            list(client.map(model, [messages(docs[0])] * 2 * len(pins), max_in_flight=IN_FLIGHT, max_tokens=4))
            started = time.perf_counter()
            results = list(
                client.map(
                    model,
                    [messages(d) for d in docs],
                    # Enough queued that every worker's slots stay full (continuous batching).
                    max_in_flight=IN_FLIGHT * len(pins),
                    max_tokens=max_tokens,
                    temperature=0,
                )  # fmt: skip
            )
            seconds = time.perf_counter() - started
            # Shows that every worker took its share (the warm-up jobs included).
            print("    jobs per worker: " + ", ".join(str(w.jobs_done) for w in client.status().workers), flush=True)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)
        connection.close()
    done = [r for r in results if isinstance(r, CompletionResult)]
    if cores:
        name = f"hostler, {len(cores)} worker{'s' if len(cores) > 1 else ''} on core{'s' if len(cores) > 1 else ''} "
        name += ",".join(map(str, cores))
    else:
        name = "hostler, 1 worker, defaults"
    return Phase(
        name, seconds, len(done), sum(r.usage.completion_tokens for r in done),
        [r.text for r in done],
    )  # fmt: skip


def _wait_workers(client: Client, model: str, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len([w for w in client.status().workers if w.model == model]) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} workers did not start within {timeout:.0f} s")
        time.sleep(0.2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=24, help="Documents to summarize.")
    parser.add_argument("--max-tokens", type=int, default=64, help="Tokens per summary at most.")
    args = parser.parse_args(argv)
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs taskset and at least two cores")
    path = fetch(SMOLLM2, quiet=True)
    docs = documents(args.docs)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(EmbeddedRedis())
        models_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hostler-bench-batch-")))
        folder = models_dir / MODEL
        folder.mkdir()
        (folder / path.name).symlink_to(path)
        # One thread per worker: each worker is given one core.
        (folder / "model.yaml").write_text(
            f"id: {MODEL}\nengine: llama\nfile: {path.name}\nload:\n  n_ctx: {N_CTX}\n  n_threads: 1\n"
        )
        defaults = models_dir / DEFAULTS_MODEL
        defaults.mkdir()
        (defaults / path.name).symlink_to(path)
        (defaults / "model.yaml").write_text(f"id: {DEFAULTS_MODEL}\nengine: llama\nfile: {path.name}\n")
        print(f"{len(docs)} documents, max_tokens {args.max_tokens}, SmolLM2-135M-Instruct, temperature 0; "
              f"workers run {IN_FLIGHT} jobs at once, sharing the prompt cache", flush=True)  # fmt: skip
        phases = [in_process(path, docs, args.max_tokens)]
        print(f"  {phases[-1].name}: {phases[-1].docs_per_min:.1f} docs/min", flush=True)
        for cores in ([0], [0, 1]):
            phases.append(through_hostler(server.url, models_dir, cores, docs, args.max_tokens))
            print(f"  {phases[-1].name}: {phases[-1].docs_per_min:.1f} docs/min", flush=True)
        phases.append(in_process(path, docs, args.max_tokens, one_job_at_a_time=True))
        print(f"  {phases[-1].name}: {phases[-1].docs_per_min:.1f} docs/min", flush=True)
        phases.append(through_hostler(server.url, models_dir, [], docs, args.max_tokens, model=DEFAULTS_MODEL))
        print(f"  {phases[-1].name}: {phases[-1].docs_per_min:.1f} docs/min", flush=True)
    inproc, one, two, serial, default = phases
    print(f"\n{'':<34} {'docs/min':>9} {'tokens/s':>9} {'seconds':>8}")
    for phase in phases:
        print(f"{phase.name:<34} {phase.docs_per_min:>9.1f} {phase.tokens_per_s:>9.1f} {phase.seconds:>8.1f}")
    same = sum(a == b for a, b in zip(inproc.texts, one.texts, strict=False))
    print(f"\n1 worker / in-process:   {one.docs_per_min / inproc.docs_per_min:.3f}  (target >= 0.95)")
    print(f"2 workers / 1 worker:    {two.docs_per_min / one.docs_per_min:.3f}  (target >= 1.8)")
    print(f"defaults / one at a time: {default.docs_per_min / serial.docs_per_min:.3f}  (target >= 1.3)")
    print(f"summaries equal to in-process at temperature 0: {same}/{len(docs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
