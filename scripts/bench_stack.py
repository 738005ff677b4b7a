"""The benchmark's moving parts: worker processes, the host report, CPU accounting.

Split from bench_queue.py so that file holds only what is measured and how it is reported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import redis
from hostler.schemas import Keys
from hostler.worker.control.host_agent import REPORT_EVERY_S, HostAgent, worker_command, worker_env

HOST_ID = "bench"
# Explicit, so that a HOSTLER_PREFIX in the environment cannot split client and workers.
PREFIX = "hostler-bench:"
WORKER_STOP_S = 15.0
N_CTX = 2048
SEED = 1234

PROMPTS = (
    "The three most important ideas in the history of science are",
    "Write a short note to a neighbour asking them to water the plants while you are away:\n",
    "Q: Why is the sky blue?\nA:",
    "Here is a simple recipe for pancakes. Ingredients:",
    "Once upon a time, in a small village by the sea,",
    "List five tips for writing clear documentation:\n1.",
    "A message queue is useful in a web application because",
    "The main differences between a cat and a dog are",
)

MACHINE = "machine"
OTHER = "other"


class CpuMeter:
    """CPU seconds (user+system) of named processes and of the whole machine.

    delta() adds OTHER: what the machine spent beyond this benchmark's own processes
    (named or background), that is other programs and hypervisor steal. On a shared
    2-core machine that is the noise that decides whether a timing means anything.
    """

    def __init__(self, named: dict[str, int], background: Sequence[int] = ()) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in named.items()}
        self.background = [psutil.Process(pid) for pid in background]

    def read(self) -> dict[str, float]:
        out = {name: _process_cpu(proc) for name, proc in self.procs.items()}
        out[OTHER] = sum(_process_cpu(proc) for proc in self.background)
        t = psutil.cpu_times()
        # guest time is already inside user; idle and iowait are not work.
        out[MACHINE] = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        out[MACHINE] += getattr(t, "steal", 0.0)
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        diff = {name: after[name] - before[name] for name in before}
        ours = sum(v for name, v in diff.items() if name != MACHINE)
        diff[OTHER] = max(0.0, diff.pop(MACHINE) - ours)
        return diff


def _process_cpu(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
        return float(times.user + times.system)
    except psutil.Error:
        return 0.0


class WorkerProcesses:
    """`hostler worker` subprocesses, one per model, stopped the way the host agent stops them."""

    def __init__(self, redis_url: str, models_dir: Path, logs_dir: Path) -> None:
        self.redis_url = redis_url
        self.models_dir = models_dir
        self.logs_dir = logs_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, model: str) -> None:
        cmd = worker_command(model, self.models_dir, PREFIX, HOST_ID)
        with (self.logs_dir / f"{model}.log").open("wb") as log:
            # Own session: a terminal Ctrl-C reaches only this script, which then stops the
            # workers with SIGTERM (finish the job) instead of killing them mid-token.
            # The URL by environment, never argv: `ps` shows every user a command line.
            self.procs[model] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=worker_env(self.redis_url), start_new_session=True
            )

    def wait_alive(self, connection: redis.Redis, keys: Keys, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(self.procs)
        while waiting:
            for model in sorted(waiting):
                code = self.procs[model].poll()
                if code is not None:
                    raise RuntimeError(f"worker for {model} exited with {code}:\n{self.log_tail(model)}")
                if connection.exists(keys.alive(model)):
                    waiting.discard(model)
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers for {sorted(waiting)} not alive within {timeout:.0f}s")
            time.sleep(0.05)

    def meter(self, model: str, redis_pid: int) -> CpuMeter:
        """Names this model's worker, this process and Redis; the other workers are background."""
        named = {"worker": self.procs[model].pid, "bench": os.getpid(), "redis": redis_pid}
        return CpuMeter(named, [p.pid for m, p in self.procs.items() if m != model])

    def log_tail(self, model: str, chars: int = 2000) -> str:
        path = self.logs_dir / f"{model}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_S
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class HostReporter:
    """Keeps the host report fresh, which the client needs to accept a model.

    Only HostAgent.report() runs here, not HostAgent.run(): run() rescans the models
    directory every 5 s (reading 8 MB of each GGUF) inside the process being timed, and
    spawns workers on demand, while this benchmark wants its workers started up front.
    """

    def __init__(self, agent: HostAgent) -> None:
        self.agent = agent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="host-report", daemon=True)

    def __enter__(self) -> HostReporter:
        self.agent.report()
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(REPORT_EVERY_S):
            try:
                self.agent.report()
            except redis.RedisError as exc:
                print(f"host report failed: {exc}", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.agent.stop()
        # No children to stop; this removes the host report.
        self.agent.shutdown(timeout=1.0)
