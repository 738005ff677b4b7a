#!/usr/bin/env python3
"""The queue's ceiling: how many jobs a second one Redis sustains, and what each job costs it.

Starts its own redis-server on a free port and `--workers` real worker processes
(`ModelWorker`, the worker's own loop, claim and end scripts, heartbeats) whose engine does
nothing: a generation ends after one token, a token count answers at once. What is left is
the queue's own work. This process enqueues jobs through the client's enqueue script
(pipelined, as many clients at once would) while the workers drain them, and measures over
the window:

* jobs/s finished (on this machine, bounded by the Python processes' CPU, not by Redis);
* Redis commands per job (INFO commandstats deltas, Lua-internal calls included), by command;
* Redis CPU per job (INFO cpu, the main thread), and the jobs/s that one Redis core would
  sustain at that cost: the ceiling, whatever the number of workers and machines.

The no-op engine lives here: a benchmark of queue overhead, never a test.

Usage::

    python scripts/bench_queue_ceiling.py                 # 8 workers, 20,000 jobs of each kind
    python scripts/bench_queue_ceiling.py --workers 4 --jobs 5000 --kinds token_count
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from hostler.client._connection import connect
from hostler.client._options import Options
from hostler.client._requests import enqueue_call
from hostler.client._rqstore import ENQUEUE_SCRIPT, make_queue
from hostler.schemas import CompletionJob, FinishReason, Job, Keys, LoadParams, SamplingParams, TokenCountJob
from hostler.worker.embedded_redis import EmbeddedRedis
from hostler.worker.engines.protocol import GenerationRequest, StepOutput
from hostler.worker.models.registry import scan
from make_tiny_gguf import write_tiny_gguf
from rq.registry import FinishedJobRegistry

PREFIX = "hostler-ceiling:"
MODEL = "noop"


class NoopSlots:
    """A SlotEngine that does no work: each generation yields one piece and ends."""

    def __init__(self, path: Path, params: LoadParams, *, chat_template: str | None = None) -> None:
        self.n_ctx = params.n_ctx
        self.n_slots = params.n_parallel
        self._running: dict[int, int] = {}  # handle -> prompt tokens
        self._next = 0

    @property
    def free_slots(self) -> int:
        return self.n_slots - len(self._running)

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1

    def start(self, request: GenerationRequest) -> int:
        self._next += 1
        self._running[self._next] = self.count_tokens(request.prompt or "")
        return self._next

    def step(self) -> list[StepOutput]:
        finished: FinishReason = "length"
        out = [StepOutput(seq, "x", finished, prompt, 1) for seq, prompt in self._running.items()]
        self._running.clear()
        return out

    def cancel(self, seq: int) -> None:
        self._running.pop(seq, None)

    def close(self) -> None:
        self._running.clear()


def worker_child(models_dir: Path) -> None:
    """One real worker process serving MODEL with the no-op engine (run by --worker-child)."""
    from hostler.worker.serving.worker import ModelWorker

    manifest = scan(models_dir).models[MODEL]
    worker = ModelWorker(
        connection=connect(os.environ["HOSTLER_REDIS_URL"]),
        keys=Keys(PREFIX),
        manifest=manifest,
        engine_factory=NoopSlots,
        host="ceiling",
        preload=True,
    )
    worker.install_signal_handlers()
    worker.run()


def start_workers(url: str, models_dir: Path, count: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        with (logs / f"worker-{i}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--worker-child", str(models_dir)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(os.environ, HOSTLER_REDIS_URL=url),
                    start_new_session=True,
                )
            )
    return procs


def stop_workers(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_cpu(conn: redis.Redis) -> float:
    info = conn.info("cpu")
    main = info.get("used_cpu_user_main_thread")
    if main is not None:
        return float(main) + float(info["used_cpu_sys_main_thread"])
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def command_calls(conn: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in conn.info("commandstats").items()}


def make_job(kind: str, i: int) -> Job:
    if kind == "token_count":
        return TokenCountJob(model=MODEL, text=f"count the words of job {i}")
    return CompletionJob(model=MODEL, prompt=f"job {i}", params=SamplingParams(max_tokens=1))


@dataclass(frozen=True)
class Window:
    kind: str
    jobs: int
    enqueue_s: float
    elapsed_s: float
    calls: dict[str, float]  # per job, by command (an EVALSHA and the calls inside it all count)
    redis_cpu_s: float

    @property
    def commands_per_job(self) -> float:
        return sum(self.calls.values())

    @property
    def cpu_us_per_job(self) -> float:
        return self.redis_cpu_s / self.jobs * 1e6

    def report(self, workers: int) -> str:
        top = ", ".join(f"{name} {n:.2f}" for name, n in sorted(self.calls.items(), key=lambda kv: -kv[1])[:10])
        return (
            f"{self.kind}: {self.jobs} jobs, {self.jobs / self.elapsed_s:.0f} jobs/s finished with {workers} workers"
            f" (enqueue alone {self.jobs / self.enqueue_s:.0f} jobs/s); Redis {self.redis_cpu_s / self.elapsed_s:.0%}"
            f" busy\n  Redis commands per job: {self.commands_per_job:.1f} ({top})\n  Redis CPU per job:"
            f" {self.cpu_us_per_job:.0f} us -> one Redis core sustains ~{1e6 / self.cpu_us_per_job:.0f} jobs/s"
        )


def measure(conn: redis.Redis, keys: Keys, kind: str, jobs: int, tag: str) -> Window:
    """Enqueues `jobs` while the workers drain them; the figures of that window."""
    script = conn.register_script(ENQUEUE_SCRIPT)
    queue = make_queue(conn, keys.queue_name(MODEL))
    finished = FinishedJobRegistry(queue=queue)
    done_before = finished.count
    calls_before, cpu_before = command_calls(conn), redis_cpu(conn)
    started = time.perf_counter()
    options = Options()
    batch = 200
    for first in range(0, jobs, batch):
        with conn.pipeline(transaction=False) as pipe:
            for i in range(first, min(jobs, first + batch)):
                call = enqueue_call(queue, keys, make_job(kind, i), f"{tag}-{i:07d}", options, waiting_ms=0)
                script(keys=call.keys, args=call.args, client=pipe)
            replies = pipe.execute()
        if any(int(r[0]) != 1 for r in replies):
            raise SystemExit(f"a job was refused: {replies[0]!r}")
    enqueued = time.perf_counter() - started
    deadline = time.monotonic() + 600
    while finished.count - done_before < jobs:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {finished.count - done_before} of {jobs} jobs finished in 600 s")
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    cpu = redis_cpu(conn) - cpu_before
    after = command_calls(conn)
    per_command = {c: (after[c] - calls_before.get(c, 0)) / jobs for c in after}
    per_command.pop("info", None)
    per_command.pop("zcard", None)  # this process's own polling of the finished registry
    return Window(kind, jobs, enqueued, elapsed, {c: n for c, n in per_command.items() if n}, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=20_000, help="Jobs of each kind.")
    parser.add_argument("--kinds", default="token_count,completion")
    parser.add_argument("--worker-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_child is not None:
        worker_child(args.worker_child)
        return
    one, five, _ = os.getloadavg()
    print(f"{args.workers} no-op workers; load average {one:.2f} {five:.2f} on {os.cpu_count()} cores")
    keys = Keys(PREFIX)
    with tempfile.TemporaryDirectory(prefix="hostler-ceiling-") as tmp, EmbeddedRedis() as server:
        models_dir = Path(tmp) / "models"
        models_dir.mkdir()
        write_tiny_gguf(models_dir / f"{MODEL}.gguf")
        conn = redis.Redis.from_url(server.url)
        # Unbounded queue: the producer here outruns the workers by design.
        conn.hset(keys.max_queue, "*", 0)
        procs = start_workers(server.url, models_dir, args.workers, Path(tmp))
        try:
            deadline = time.monotonic() + 120
            while conn.scard(keys.workers) < args.workers:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise SystemExit("the workers did not start; see their logs")
                time.sleep(0.2)
            time.sleep(2.5)  # every worker past its preload and first heartbeat
            results = [measure(conn, keys, kind, args.jobs, kind) for kind in args.kinds.split(",")]
        finally:
            stop_workers(procs)
    one, five, _ = os.getloadavg()
    for window in results:
        print("\n" + window.report(args.workers))
    print(f"\nload average at end {one:.2f} {five:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
