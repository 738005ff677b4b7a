#!/usr/bin/env python3
"""Benchmark: what waiting for a replica (`wait_replicas=1`, Redis WAIT) costs per job.

One run starts a primary with one replica and three Sentinels (scripts/sentinel_set.py), writes
the tiny GGUF twice (models `tiny-off` and `tiny-on`) and starts a real `hostler worker` for each
against the redis+sentinel:// URL, one with `wait_replicas=0`, one with `wait_replicas=1`; the
clients of each model use the same setting. Token-count jobs are the probe: the model only
tokenizes, so a job is almost nothing but its Redis round trips, and WAIT's share is as large as
it gets (a generation of even a few tokens takes milliseconds more).

Both settings run side by side and take turns, so that whatever else loads the machine hits both
alike (on a shared 2-core machine that load is most of the noise):

* sequential: one client per setting; jobs alternate (off, on), (on, off), ...: milliseconds per job
  (the latency a job pays), the median of each setting and of the paired differences;
* concurrent: an AsyncClient per setting with --concurrency jobs in flight, in blocks of
  --block jobs taken in turns: jobs/s one worker serves, the median block of each setting.

`--generate N` makes every job a completion of N tokens (temperature 0) instead: what WAIT costs
next to a job that generates.

Usage::

    python scripts/bench_durability.py            # 1,000 jobs each one at a time, 8 blocks of 500
    python scripts/bench_durability.py --quick
    python scripts/bench_durability.py --generate 32 --sequential 200 --blocks 4 --block 100
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from bench_stack import HostReporter
from hostler import AsyncClient, Client
from hostler.client._connection import connect
from hostler.schemas import Keys
from hostler.worker.control.host_agent import HostAgent
from make_tiny_gguf import write_tiny_gguf
from sentinel_set import sentinel_set

SETTINGS = {"off": "wait_replicas=0", "on": "wait_replicas=1"}


def _model(setting: str) -> str:
    return f"tiny-{setting}"


def _worker(url: str, model: str, models_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "hostler.worker", "worker", "--model", model, "--models", str(models_dir)]
    with log.open("ab") as handle:
        # The URL by environment, never argv.
        return subprocess.Popen(
            [*command, "--preload", "--host-id", "bench"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, HOSTLER_REDIS_URL=url),
            start_new_session=True,
        )


def _wait_alive(url: str, model: str, process: subprocess.Popen[bytes], log: Path) -> None:
    connection = connect(url)
    deadline = time.monotonic() + 60
    try:
        while not connection.exists(Keys().alive(model)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not come up:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
    finally:
        connection.close()


def _job(client: Client, model: str, i: int, generate: int) -> None:
    if generate:
        client.complete(model, f"Sentence number {i}:", max_tokens=generate, temperature=0)
    else:
        client.count_tokens(model, f"how many tokens are in sentence number {i}")


async def _async_job(client: AsyncClient, model: str, i: int, generate: int) -> None:
    if generate:
        await client.complete(model, f"Sentence number {i}:", max_tokens=generate, temperature=0)
    else:
        await client.count_tokens(model, f"how many tokens are in sentence number {i}")


def _sequential(urls: dict[str, str], jobs: int, generate: int) -> dict[str, list[float]]:
    """Milliseconds of each job, the settings taking turns job by job."""
    clients = {s: Client(url, timeout=60) for s, url in urls.items()}
    took: dict[str, list[float]] = {s: [] for s in urls}
    try:
        for setting, client in clients.items():
            client.count_tokens(_model(setting), "warm up the connection and the pub/sub pool")
        order = list(clients.items())
        for i in range(jobs):
            # Each goes first in every other pair: the one that follows shares the CPU with the
            # other worker's leftovers (its heartbeat, its next look at the queue).
            for setting, client in order if i % 2 else order[::-1]:
                started = time.perf_counter()
                _job(client, _model(setting), i, generate)
                took[setting].append((time.perf_counter() - started) * 1000)
    finally:
        for client in clients.values():
            client.close()
    return took


async def _concurrent(
    urls: dict[str, str], blocks: int, block: int, concurrency: int, generate: int
) -> dict[str, list[float]]:
    """Jobs/s of each block, the settings taking turns block by block."""
    rates: dict[str, list[float]] = {s: [] for s in urls}
    clients = {s: AsyncClient(url, timeout=120) for s, url in urls.items()}
    try:
        for setting, client in clients.items():
            await client.count_tokens(_model(setting), "warm up")
        for _ in range(blocks):
            for setting, client in clients.items():
                gate = asyncio.Semaphore(concurrency)

                async def one(i: int, client: AsyncClient, model: str, gate: asyncio.Semaphore) -> None:
                    async with gate:
                        await _async_job(client, model, i, generate)

                started = time.perf_counter()
                await asyncio.gather(*(one(i, client, _model(setting), gate) for i in range(block)))
                rates[setting].append(block / (time.perf_counter() - started))
    finally:
        for client in clients.values():
            await client.aclose()
    return rates


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=1000, help="jobs one at a time, per setting")
    parser.add_argument("--blocks", type=int, default=8, help="blocks of the concurrent load, per setting")
    parser.add_argument("--block", type=int, default=500, help="jobs per block")
    parser.add_argument("--concurrency", type=int, default=32, help="jobs in flight in the concurrent load")
    parser.add_argument("--generate", type=int, default=0, help="tokens each job generates (0: token counts)")
    parser.add_argument("--quick", action="store_true", help="200 jobs one at a time, 4 blocks of 200")
    args = parser.parse_args(argv)
    if args.quick:
        args.sequential, args.blocks, args.block = 200, 4, 200
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="bench-durability-") as tmp:
        base = Path(tmp)
        models_dir = base / "models"
        models_dir.mkdir()
        write_tiny_gguf(models_dir / "tiny-off.gguf")
        shutil.copyfile(models_dir / "tiny-off.gguf", models_dir / "tiny-on.gguf")
        with sentinel_set(base / "redis", replicas=1) as watched:
            urls = {s: f"{watched.url()}?{query}" for s, query in SETTINGS.items()}
            agent = HostAgent(
                connection=connect(watched.url()),
                keys=Keys(),
                redis_url=watched.url(),
                models_dir=models_dir,
                host="bench",
            )
            agent.rescan()
            workers = []
            try:
                for setting, url in urls.items():
                    log = base / f"worker-{setting}.log"
                    workers.append(process := _worker(url, _model(setting), models_dir, log))
                    _wait_alive(url, _model(setting), process, log)
                with HostReporter(agent):
                    load_before = os.getloadavg()
                    took = _sequential(urls, args.sequential, args.generate)
                    rates = asyncio.run(_concurrent(urls, args.blocks, args.block, args.concurrency, args.generate))
                    load_after = os.getloadavg()
            finally:
                for process in workers:
                    process.terminate()
                    process.wait(30)
    _report(took, rates, (load_before, load_after), args)
    return 0


def _report(
    took: dict[str, list[float]],
    rates: dict[str, list[float]],
    loads: tuple[tuple[float, ...], ...],
    args: argparse.Namespace,
) -> None:
    ms = {s: statistics.median(v) for s, v in took.items()}
    paired = statistics.median(on - off for on, off in zip(took["on"], took["off"], strict=True))
    rate = {s: statistics.median(v) for s, v in rates.items()}
    load = " -> ".join(f"{avg[0]:.1f}" for avg in loads)
    kind = f"{args.generate}-token completions" if args.generate else "token-count jobs"
    print(
        f"{kind} on the tiny GGUF, one worker per setting, primary + 1 replica on this machine "
        f"({psutil.cpu_count()} CPUs, 1-minute load average {load})"
    )
    print(f"{'wait_replicas':>14} {'ms/job (1 client, median)':>26} {f'jobs/s ({args.concurrency} in flight)':>24}")
    for setting, query in SETTINGS.items():
        print(f"{query.split('=')[1]:>14} {ms[setting]:>26.3f} {rate[setting]:>24.0f}")
    print(
        f"WAIT costs {paired:+.3f} ms per job one at a time (median of {len(took['on'])} paired jobs, "
        f"{paired / ms['off'] * 100:+.0f}%), and {(rate['on'] / rate['off'] - 1) * 100:+.0f}% jobs/s with "
        f"{args.concurrency} in flight (median of {args.blocks} blocks of {args.block})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
