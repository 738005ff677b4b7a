#!/usr/bin/env python3
"""The control plane at a thousand hosts: the real controller and janitor against simulated hosts.

Starts its own redis-server on a free port, a fleet of simulated host agents and workers
(`sim_fleet.py`: asyncio tasks in a few processes, real keys, TTLs and intervals), then the
real `hostler controller` and `hostler janitor` as processes, and measures:

* Redis commands/s of the fleet alone, then with the controller and janitor (INFO commandstats
  deltas), and the memory the control plane's keys take (INFO memory, MEMORY USAGE);
* the controller's step time (its own debug line per step: the work, not its 0.5 s wait for
  demand), p50/p99;
* time from a job's demand to its assignment: a real `Client.submit` on a model no host runs,
  then polling the assignment hashes of the hosts that have it on disk (every 5 ms);
* the janitor's lease pass and dead-worker sweep with `--jobs` queued jobs holding leases
  (written with the client's own enqueue script, on models no host has, so nobody runs them).

`--profile` then runs a few controller steps in this process under cProfile and prints where
the time goes. Figures are printed with os.getloadavg(): the machine may be shared.

Usage::

    python scripts/simulate_hosts.py                     # 1,000 hosts, 2,000 models, 100,000 jobs
    python scripts/simulate_hosts.py --hosts 100 --models 200 --jobs 10000 --duration 15
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import os
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from hostler.client import Client
from hostler.client._options import Options
from hostler.client._requests import enqueue_call
from hostler.client._rqstore import ENQUEUE_SCRIPT, make_queue
from hostler.schemas import PRIORITIES, Assignment, CompletionJob, Keys
from hostler.worker.control.controller import Controller
from hostler.worker.embedded_redis import EmbeddedRedis
from sim_fleet import PREFIX, Fleet, run_fleet

# Each line: wall time, then CPU time (ms).
STEP_LINE = re.compile(r"step took ([\d.]+) ms, ([\d.]+) ms of CPU")
LEASE_LINE = re.compile(r"lease pass took ([\d.]+) ms, ([\d.]+) ms of CPU")
SWEEP_LINE = re.compile(r"sweep took ([\d.]+) ms, ([\d.]+) ms of CPU")
# The young collection the controller runs after each step, outside the step's own time (ms of CPU).
COLLECT_LINE = re.compile(r"then ([\d.]+) ms collecting")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: list[float], unit: str = "ms") -> str:
    if not values:
        return "none measured"
    return (
        f"p50 {percentile(values, 0.5):.1f} {unit}, p99 {percentile(values, 0.99):.1f} {unit}, "
        f"max {max(values):.1f} {unit} ({len(values)} samples)"
    )


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def command_calls(conn: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in conn.info("commandstats").items()}


def rate(before: dict[str, int], after: dict[str, int], seconds: float) -> tuple[float, dict[str, float]]:
    per = {c: (after[c] - before.get(c, 0)) / seconds for c in after}
    # The measuring process's own calls (INFO, the probes' polling) are no one's load.
    for own in ("info", "hexists", "scard"):
        per.pop(own, None)
    return sum(per.values()), dict(sorted(per.items(), key=lambda kv: -kv[1])[:8])


def dataset_memory(conn: redis.Redis) -> tuple[int, int]:
    """The keys' memory and the client connections' buffers (2,000 of them here)."""
    info = conn.info("memory")
    return int(info["used_memory_dataset"]), int(info.get("mem_clients_normal", 0))


def wait_for(what: str, probe: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


@contextmanager
def hostler_process(command: str, url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`hostler <command>` (debug log: one line per step) as a child process."""
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "hostler.worker", "-vv", command, "--prefix", PREFIX],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, HOSTLER_REDIS_URL=url, PYTHONUNBUFFERED="1"),
        start_new_session=True,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        handle.close()


def lines_since(log: Path, offset: int, pattern: re.Pattern[str]) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of every line matching pattern after offset."""
    found = [(float(m.group(1)), float(m.group(2))) for m in pattern.finditer(text_since(log, offset))]
    return [w for w, _ in found], [c for _, c in found]


def text_since(log: Path, offset: int) -> str:
    return log.read_bytes()[offset:].decode(errors="replace")


def both(times: tuple[list[float], list[float]]) -> str:
    return f"wall {spread(times[0])}; CPU {spread(times[1])}"


def place_initial(conn: redis.Redis, keys: Keys, fleet: Fleet, placed: int) -> list[str]:
    """Assignments as an earlier controller would have left them: one worker each for the
    first `placed` models, on a host that has it on disk. Returns the models left unplaced."""
    disk = fleet.disk()
    holders: dict[str, list[str]] = {}
    for host, models in disk.items():
        for model in models:
            holders.setdefault(model, []).append(host)
    load_of = {h: 0 for h in disk}
    now = time.time()
    models = [fleet.model_id(m) for m in range(fleet.models)]
    with conn.pipeline(transaction=False) as pipe:
        for model in models[:placed]:
            host = min(holders[model], key=lambda h: (load_of[h], h))
            load_of[host] += 1
            assignment = Assignment(model=model, host=host, estimate_bytes=3 * 1024**3, placed_at=now, reason="sim")
            pipe.hset(keys.assignments(host), model, assignment.model_dump_json())
        # Every model has had jobs once, so rq knows its queues (the janitor sweeps each).
        for model in models:
            for priority in PRIORITIES:
                pipe.sadd("rq:queues", "rq:queue:" + keys.queue_name(model, priority))
        pipe.execute()
    return models[placed:]


def probe_demand(conn: redis.Redis, client: Client, keys: Keys, model: str, holders: list[str]) -> float:
    """Seconds from a real submit (its demand) to the model's assignment on some host."""
    client.submit(model, "ping", max_tokens=1)
    started = time.perf_counter()
    while time.perf_counter() - started < 30:
        with conn.pipeline(transaction=False) as pipe:
            for host in holders:
                pipe.hexists(keys.assignments(host), model)
            if any(pipe.execute()):
                return time.perf_counter() - started
        time.sleep(0.005)
    return float("inf")


def enqueue_leased_jobs(conn: redis.Redis, keys: Keys, jobs: int, models: int) -> float:
    """`jobs` queued jobs with a start deadline (so a lease) on models no host has; jobs/s."""
    script = conn.register_script(ENQUEUE_SCRIPT)
    options = Options(priority="batch", start_within_s=3600)
    queues = {}
    started = time.perf_counter()
    batch = 500
    for first in range(0, jobs, batch):
        with conn.pipeline(transaction=False) as pipe:
            for i in range(first, min(jobs, first + batch)):
                model = f"offline{i % models:04d}"
                queue = queues.get(model) or queues.setdefault(model, make_queue(conn, keys.queue_name(model, "batch")))
                job = CompletionJob(model=model, prompt=f"job {i}")
                call = enqueue_call(queue, keys, job, f"sim-job-{i:06d}", options, waiting_ms=0)
                script(keys=call.keys, args=call.args, client=pipe)
            pipe.execute()
    return jobs / (time.perf_counter() - started)


def memory_by_family(conn: redis.Redis, keys: Keys) -> dict[str, int]:
    families = {
        "host states": keys.host("*"),
        "host catalogs": keys.host_catalog("*"),
        "assignments": keys.assignments("*"),
        "worker reports": keys.worker("*"),
        "alive keys": keys.alive("*"),
        "cluster view": keys.view,
        "rq worker records": "rq:worker:*",
    }
    found = {}
    for name, pattern in families.items():
        names = list(conn.scan_iter(match=pattern, count=1000))
        with conn.pipeline(transaction=False) as pipe:
            for key in names:
                pipe.memory_usage(key, samples=0)
            found[name] = sum(int(n or 0) for n in pipe.execute())
    return found


def profile_steps(url: str, keys: Keys, steps: int) -> str:
    """Steps of a controller in this process, profiled by CPU time (not wall time, which a
    loaded machine inflates with waits for a core)."""
    controller = Controller(connection=redis.Redis.from_url(url), keys=keys)
    # The first step parses every report; the ones measured are the steady state after it.
    controller.step(wait=0.01)
    profiler = cProfile.Profile(time.process_time)
    timings = []
    for _ in range(steps):
        profiler.enable()
        started = time.process_time()
        controller.step(wait=0.01)
        timings.append((time.process_time() - started) * 1000)
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    pstats.Stats(profiler, stream=out).sort_stats("cumtime").print_stats(25)
    return f"in-process steps, CPU: {spread(timings)}\n" + out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--models", type=int, default=2000)
    parser.add_argument("--copies", type=int, default=5, help="Hosts that have each model on disk.")
    parser.add_argument("--placed", type=int, default=None, help="Models running at the start (default: one a host).")
    parser.add_argument("--jobs", type=int, default=100_000, help="Queued jobs holding leases for the janitor.")
    parser.add_argument("--procs", type=int, default=4, help="Fleet processes.")
    parser.add_argument("--duration", type=float, default=30.0, help="Seconds of the controller phase.")
    parser.add_argument("--probes", type=int, default=10, help="Demand-to-assignment probes.")
    parser.add_argument("--profile", action="store_true", help="Profile a few controller steps in-process.")
    args = parser.parse_args()
    fleet = Fleet(args.hosts, args.models, args.copies)
    placed = args.hosts if args.placed is None else args.placed
    keys = Keys(PREFIX)
    print(f"simulating {args.hosts} hosts, {args.models} models ({args.copies} copies each), {placed} placed")
    print(f"at start: {load()}")
    t0 = time.perf_counter()
    logs = Path(tempfile.mkdtemp(prefix="hostler-sim-"))
    with EmbeddedRedis() as server:
        conn = redis.Redis.from_url(server.url)
        base_memory = dataset_memory(conn)[0]
        unplaced = place_initial(conn, keys, fleet, placed)
        holders: dict[str, list[str]] = {}
        for host, models in fleet.disk().items():
            for model in models:
                holders.setdefault(model, []).append(host)

        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        manager = ctx.Manager()
        outs = [manager.dict() for _ in range(args.procs)]
        fleet_procs = [
            ctx.Process(target=run_fleet, args=(server.url, fleet, i, args.procs, stop, outs[i]), daemon=True)
            for i in range(args.procs)
        ]
        for proc in fleet_procs:
            proc.start()
        try:
            wait_for("every host's report", lambda: conn.scard(keys.hosts) >= args.hosts, 180)
            wait_for("every placed worker's report", lambda: conn.scard(keys.workers) >= placed, 180)
            print(f"fleet up in {time.perf_counter() - t0:.0f} s")

            window = 10.0
            before = command_calls(conn)
            time.sleep(window)
            fleet_rate, fleet_top = rate(before, command_calls(conn), window)
            fleet_memory = dataset_memory(conn)[0] - base_memory

            controller_log, janitor_log = logs / "controller.log", logs / "janitor.log"
            with (
                hostler_process("controller", server.url, controller_log),
                hostler_process("janitor", server.url, janitor_log),
            ):
                wait_for("the controller's first step", lambda: conn.exists(keys.view), 60)
                time.sleep(2.0)
                offset = controller_log.stat().st_size
                before, started = command_calls(conn), time.perf_counter()
                client = Client(server.url, prefix=PREFIX)
                latencies = []
                every = args.duration / max(1, args.probes)
                for model in unplaced[: args.probes]:
                    probe_started = time.perf_counter()
                    latencies.append(probe_demand(conn, client, keys, model, holders[model]))
                    time.sleep(max(0.0, every - (time.perf_counter() - probe_started)))
                time.sleep(max(0.0, args.duration - (time.perf_counter() - started)))
                elapsed = time.perf_counter() - started
                total_rate, total_top = rate(before, command_calls(conn), elapsed)
                steps = lines_since(controller_log, offset, STEP_LINE)
                collections = [float(m.group(1)) for m in COLLECT_LINE.finditer(text_since(controller_log, offset))]
                plane_memory, clients_memory = dataset_memory(conn)
                plane_memory -= base_memory
                families = memory_by_family(conn, keys)
                load_then = load()

                jobs_before = dataset_memory(conn)[0]
                lease_offset = janitor_log.stat().st_size
                enqueue_rate = enqueue_leased_jobs(conn, keys, args.jobs, max(1, args.models // 2))
                jobs_memory = dataset_memory(conn)[0] - jobs_before
                lease_offset = janitor_log.stat().st_size
                time.sleep(15.0)
                leases = lines_since(janitor_log, lease_offset, LEASE_LINE)
                sweeps = lines_since(janitor_log, 0, SWEEP_LINE)
                client.close()
            profile = profile_steps(server.url, keys, 12) if args.profile else ""
        finally:
            stop.set()
            for proc in fleet_procs:
                proc.join(30)
                if proc.is_alive():
                    proc.kill()
        counters: dict[str, int] = {}
        for out in outs:
            for name, value in out.items():
                counters[name] = counters.get(name, 0) + value

    mib = 1024**2
    print(f"\n== {args.hosts} hosts, {args.models} models, {placed} workers; {load_then}")
    print(f"fleet alone: {fleet_rate:.0f} Redis commands/s; top: {fmt_top(fleet_top)}")
    extra = total_rate - fleet_rate
    print(f"with controller + janitor: {total_rate:.0f} commands/s ({extra:+.0f}); top: {fmt_top(total_top)}")
    print(
        f"memory (keys): fleet {fleet_memory / mib:.1f} MiB, with the controller {plane_memory / mib:.1f} MiB;"
        f" client connections' buffers {clients_memory / mib:.1f} MiB"
    )
    print("  by family: " + ", ".join(f"{name} {size / mib:.1f} MiB" for name, size in families.items()))
    print(f"controller step: {both(steps)}")
    print(f"controller's collection after each step, CPU: {spread(collections)}")
    print(f"demand to assignment: {spread([x * 1000 for x in latencies])}")
    print(f"{args.jobs} leased jobs enqueued at {enqueue_rate:.0f} jobs/s, {jobs_memory / mib:.0f} MiB")
    print(f"janitor lease pass with them: {both(leases)}")
    print(f"janitor dead-worker sweep ({args.models} models): {both(sweeps)}")
    print(f"fleet counters: {counters}")
    print(f"at end: {load()}; total {time.perf_counter() - t0:.0f} s; logs in {logs}")
    if profile:
        print(profile)


def fmt_top(top: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.0f}" for name, value in top.items())


if __name__ == "__main__":
    main()
