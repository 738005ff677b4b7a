"""The simulated side of scripts/simulate_hosts.py: host agents and idle workers as asyncio tasks.

Each simulated host does what `HostAgent.step` does against Redis, with the same keys, TTLs and
intervals (imported from the code, not restated): take a pull request (LPOP), read its
assignments (HGETALL), heartbeat its report (`write_report`, the agent's own writer: the state,
and the catalog only when it changed) every REPORT_EVERY_S or at once when its workers
changed, and block on its wake list (BLPOP 0.5 s).
For every model assigned to it, it starts a simulated worker that registers with rq as
`ModelWorker` does, heartbeats its report, alive key and rq record every HEARTBEAT_S, and takes
jobs with the real TAKE script, then blocks on the model's bell (BLPOP 1 s) when idle. A job it
takes is dropped at once (no engine): this measures the control plane, not generation.

The catalog (which host has which model on disk, its memory estimate, GPUs) is a pure function
of the seed, so the measuring process and every fleet process agree on it without talking.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event

import redis.asyncio as aioredis
from hostler.client._steps import run_async
from hostler.schemas import (
    PRIORITIES,
    Assignment,
    GpuInfo,
    GpuOffload,
    HardwareReport,
    HostReport,
    HostWorker,
    Keys,
    LoadParams,
    ModelInfo,
    WorkerReport,
)
from hostler.worker.control.host_agent import REPORT_EVERY_S
from hostler.worker.control.host_report import write_report
from hostler.worker.serving.heartbeat import HEARTBEAT_S
from hostler.worker.serving.heartbeat import REPORT_TTL_S as WORKER_TTL_S
from hostler.worker.serving.taken import TAKE
from pydantic import ValidationError
from rq.job import Job as RqJob
from rq.queue import Queue
from rq.worker import Worker as RqWorker

GIB = 1024**3
PREFIX = "hostler-sim:"
HOST_WAKE_S = 0.5  # HostAgent.step's default wait
WORKER_BELL_S = 1.0  # an idle ModelWorker's BLPOP on the bell


@dataclass(frozen=True)
class Fleet:
    """The simulated cluster's shape: hosts, models, and where each model sits on disk."""

    hosts: int
    models: int
    copies: int  # hosts that have each model on disk
    seed: int = 7

    def host_id(self, index: int) -> str:
        return f"sim-{index:04d}"

    def model_id(self, index: int) -> str:
        return f"m{index:05d}"

    def disk(self) -> dict[str, list[str]]:
        """Host -> the models on its disk."""
        rng = random.Random(self.seed)
        on_disk: dict[str, list[str]] = {self.host_id(h): [] for h in range(self.hosts)}
        for m in range(self.models):
            for h in rng.sample(range(self.hosts), min(self.copies, self.hosts)):
                on_disk[self.host_id(h)].append(self.model_id(m))
        return on_disk

    def gpus(self, host_index: int) -> list[GpuInfo]:
        # One host in four carries two 24 GiB GPUs.
        if host_index % 4:
            return []
        return [GpuInfo(index=i, name="NVIDIA L4", total_bytes=24 * GIB, free_bytes=23 * GIB) for i in range(2)]


def model_info(model: str, host: str) -> ModelInfo:
    """A 1-4 GiB GGUF model with 32 layers, as a host agent reports it."""
    size = (1 + int(model[1:]) % 4) * GIB
    layers = 32
    return ModelInfo(
        id=model,
        engine="llama",
        path=f"/models/{model}.gguf",
        size_bytes=size,
        host=host,
        chat_template=True,
        estimate_bytes=size + 300 * 1024**2,
        estimate=f"{size / GIB:.1f} GiB (weights, KV cache, compute, runtime)",
        estimate_n_ctx=2048,
        kv_bytes_per_cell=8 * 32 * 2048,
        estimate_params=LoadParams(),
        vram_estimate_bytes=0,
        offload=GpuOffload(
            layer_bytes=[size // (layers + 2)] * layers,
            layer_kv_bytes_per_cell=[2048] * layers,
            output_bytes=size // (layers + 2),
            input_bytes=size // (layers + 2),
            n_vocab=32000,
            n_embd=2048,
            n_head=32,
            n_ff=5632,
        ),
    )


def hardware(gpus: list[GpuInfo]) -> HardwareReport:
    return HardwareReport(
        os="Linux",
        arch="x86_64",
        cpu_model="AMD EPYC 7763 64-Core Processor",
        cores_physical=32,
        cores_logical=64,
        instruction_sets=["SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "AVX512"],
        ram_total_bytes=256 * GIB,
        ram_available_bytes=200 * GIB,
        gpus=gpus,
        engines={"llama": None, "mlx": "mlx-lm is not installed (pip install 'hostler[mlx]')"},
    )


@dataclass
class Counters:
    host_steps: int = 0
    reports: int = 0
    worker_heartbeats: int = 0
    takes: int = 0
    jobs_taken: int = 0
    workers_started: int = 0
    workers_stopped: int = 0


@dataclass
class _SimWorker:
    model: str
    host: str
    name: str
    pid: int
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class _Host:
    def __init__(self, url: str, keys: Keys, fleet: Fleet, index: int, models: list[str], counters: Counters) -> None:
        self.url = url
        self.keys = keys
        self.host = fleet.host_id(index)
        self.counters = counters
        gpus = fleet.gpus(index)
        self.report = HostReport(
            host=self.host,
            pid=10_000 + index,
            models_dir="/models",
            models=[model_info(m, self.host) for m in models],
            ram_total_bytes=256 * GIB,
            ram_available_bytes=200 * GIB,
            memory_limit_bytes=None,
            gpus=gpus,
            hardware=hardware(gpus),
            updated_at=time.time(),
        )
        self.workers: dict[str, _SimWorker] = {}
        self.catalog_written: str | None = None
        self.rng = random.Random(index)

    async def run(self, stop: Event) -> None:
        conn = aioredis.Redis.from_url(self.url, single_connection_client=True)
        last_report = 0.0
        try:
            while not stop.is_set():
                await conn.lpop(self.keys.pulls(self.host))
                raw = await conn.hgetall(self.keys.assignments(self.host))
                changed = self._reconcile(raw)
                if changed or time.monotonic() - last_report > REPORT_EVERY_S:
                    await self._report(conn)
                    last_report = time.monotonic()
                if await conn.blpop([self.keys.wake(self.host)], timeout=HOST_WAKE_S) is not None:
                    await conn.delete(self.keys.wake(self.host))
                self.counters.host_steps += 1
        finally:
            for worker in self.workers.values():
                worker.stop.set()
            await asyncio.gather(*(w.task for w in self.workers.values() if w.task is not None))
            await conn.aclose()

    def _reconcile(self, raw: dict[bytes, bytes]) -> bool:
        wanted = set()
        for value in raw.values():
            try:
                wanted.add(Assignment.model_validate_json(value).model)
            except ValidationError:
                continue
        changed = False
        for model in list(self.workers):
            if model not in wanted:
                self.workers.pop(model).stop.set()
                self.counters.workers_stopped += 1
                changed = True
        for model in sorted(wanted - set(self.workers)):
            pid = self.rng.randrange(100_000, 4_000_000)
            name = f"hostler.{self.host}.{model}.{pid}.{uuid.uuid4().hex[:6]}"
            worker = _SimWorker(model, self.host, name, pid)
            worker.task = asyncio.create_task(_worker(self.url, self.keys, worker, self.counters))
            self.workers[model] = worker
            self.counters.workers_started += 1
            changed = True
        return changed

    async def _report(self, conn: aioredis.Redis) -> None:
        workers = [HostWorker(model=w.model, pid=w.pid, rss_bytes=2 * GIB) for w in self.workers.values()]
        report = self.report.model_copy(
            update={
                "workers": workers,
                "updated_at": time.time(),
                "ram_available_bytes": 200 * GIB - 2 * GIB * len(workers),
            }
        )
        self.catalog_written = await run_async(conn, write_report(self.keys, report, self.catalog_written))
        self.counters.reports += 1


async def _worker(url: str, keys: Keys, worker: _SimWorker, counters: Counters) -> None:
    """An idle ModelWorker's traffic: birth, heartbeats, takes, bell waits, death."""
    conn = aioredis.Redis.from_url(url, single_connection_client=True)
    queues = [keys.queue_name(worker.model, p) for p in PRIORITIES]
    queue_keys = [Queue.redis_queue_namespace_prefix + q for q in queues]
    rq_key = RqWorker.redis_worker_namespace_prefix + worker.name
    taken = keys.taken(worker.model, worker.name)
    bell = keys.bell(worker.model)
    take = conn.register_script(TAKE)
    started = time.time()
    async with conn.pipeline(transaction=True) as pipe:
        pipe.delete(rq_key)
        pipe.hset(rq_key, mapping={"birth": started, "queues": ",".join(queues), "pid": worker.pid, "state": "idle"})
        pipe.sadd(RqWorker.redis_workers_keys, rq_key)
        for queue in queues:
            pipe.sadd(f"rq:workers:{queue}", rq_key)
        pipe.expire(rq_key, 420 + 60)
        await pipe.execute()
    jobs_done = 0
    next_beat = 0.0
    try:
        while not worker.stop.is_set():
            if time.monotonic() >= next_beat:
                await _heartbeat(conn, keys, worker, rq_key, started, jobs_done)
                counters.worker_heartbeats += 1
                next_beat = time.monotonic() + HEARTBEAT_S
            got = await take(keys=[*queue_keys, taken, bell], args=[RqJob.redis_job_namespace_prefix, *queues])
            counters.takes += 1
            if got:
                # No engine: the id leaves the taken list as a started job's would.
                await conn.lrem(taken, 1, got[1])
                jobs_done += 1
                counters.jobs_taken += 1
                continue
            await conn.blpop([bell], timeout=WORKER_BELL_S)
    finally:
        async with conn.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.srem(f"rq:workers:{queue}", rq_key)
            pipe.srem(RqWorker.redis_workers_keys, rq_key)
            pipe.hset(rq_key, "death", time.time())
            pipe.expire(rq_key, 60)
            pipe.delete(keys.worker(worker.name))
            pipe.srem(keys.workers, worker.name)
            await pipe.execute()
        await conn.aclose()


async def _heartbeat(
    conn: aioredis.Redis, keys: Keys, worker: _SimWorker, rq_key: str, started: float, jobs_done: int
) -> None:
    report = WorkerReport(
        name=worker.name,
        model=worker.model,
        host=worker.host,
        pid=worker.pid,
        state="idle",
        cpu_percent=0.0,
        rss_bytes=2 * GIB,
        slots=8,
        loaded=True,
        load_params=LoadParams().model_dump(),
        jobs_done=jobs_done,
        loads=1,
        last_job_at=time.time() if jobs_done else None,
        started_at=started,
        updated_at=time.time(),
    )
    async with conn.pipeline(transaction=False) as pipe:
        pipe.set(keys.worker(worker.name), report.model_dump_json(), ex=WORKER_TTL_S)
        pipe.sadd(keys.workers, worker.name)
        pipe.set(keys.alive(worker.model), worker.name, ex=WORKER_TTL_S)
        pipe.expire(rq_key, WORKER_TTL_S * 6)
        pipe.hset(rq_key, mapping={"last_heartbeat": time.time(), "state": "idle"})
        await pipe.execute()


def run_fleet(url: str, fleet: Fleet, share: int, of: int, stop: Event, out: dict[str, int]) -> None:
    """One fleet process: the hosts whose index % of == share, until stop is set."""
    keys = Keys(PREFIX)
    disk = fleet.disk()
    counters = Counters()

    async def main() -> None:
        hosts = [
            _Host(url, keys, fleet, i, disk[fleet.host_id(i)], counters) for i in range(fleet.hosts) if i % of == share
        ]
        tasks = []
        for host in hosts:
            tasks.append(asyncio.create_task(host.run(stop)))
            await asyncio.sleep(REPORT_EVERY_S / max(1, len(hosts)))  # spread the heartbeats over time
        await asyncio.gather(*tasks)

    asyncio.run(main())
    out.update(vars(counters))
