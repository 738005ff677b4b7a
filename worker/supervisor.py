"""The host supervisor: one machine's worker processes, started on demand and restarted on crash.

It announces the host's models (a report with a TTL), starts `hostler worker` for a
model that has waiting jobs and no live worker, and ends the jobs of a worker that
died as failed. The placement issue replaces the "start on demand" decision with a
controller's desired state; the process management here stays.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
from hostler.client._rqstore import make_queue
from hostler.schemas import HostReport, Keys

from .jobstore import fail_orphans
from .registry import Catalog, scan

log = logging.getLogger("hostler.supervisor")

REPORT_TTL_S = 15
REPORT_EVERY_S = 2.0
RESCAN_EVERY_S = 5.0
MAX_BACKOFF_S = 30.0
# A model whose worker crashed this many times in a row is reported, not restarted.
MAX_CRASHES = 5


def worker_command(model: str, models_dir: Path, redis_url: str, prefix: str, host: str, *extra: str) -> list[str]:
    """The command line of one model's worker process."""
    return [
        sys.executable, "-m", "hostler.worker", "worker",
        "--model", model,
        "--models", str(models_dir),
        "--redis", redis_url,
        "--prefix", prefix,
        "--host-id", host,
        *extra,
    ]  # fmt: skip


@dataclass
class _Child:
    model: str
    process: subprocess.Popen[bytes]
    started: float


@dataclass
class _CrashRecord:
    count: int = 0
    not_before: float = 0.0
    last_error: str = ""


@dataclass
class Supervisor:
    connection: redis.Redis
    keys: Keys
    redis_url: str
    models_dir: Path
    host: str = field(default_factory=socket.gethostname)
    worker_args: tuple[str, ...] = ()
    children: dict[str, _Child] = field(default_factory=dict)
    crashes: dict[str, _CrashRecord] = field(default_factory=dict)
    catalog: Catalog = field(default_factory=lambda: Catalog({}, []))
    _stop: threading.Event = field(default_factory=threading.Event)
    _last_scan: float = 0.0
    _last_report: float = 0.0

    # -- loop ---------------------------------------------------------------------

    def run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self.step()
                backoff = 0.1
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self.shutdown()

    def stop(self) -> None:
        self._stop.set()

    def step(self, wait: float = 0.5) -> None:
        now = time.monotonic()
        if now - self._last_scan > RESCAN_EVERY_S:
            self.rescan()
        if now - self._last_report > REPORT_EVERY_S:
            self.report()
        self._reap()
        demanded = self._wait_demand(wait)
        for model in sorted(demanded | self._models_waiting()):
            self._ensure_worker(model)

    def rescan(self) -> None:
        self.catalog = scan(self.models_dir)
        for problem in self.catalog.problems:
            log.warning("models: %s", problem)
        self._last_scan = time.monotonic()

    def report(self) -> None:
        memory = psutil.virtual_memory()
        report = HostReport(
            host=self.host,
            pid=os.getpid(),
            models_dir=str(self.models_dir),
            models=[m.info(self.host) for m in self.catalog.models.values()],
            ram_total_bytes=memory.total,
            ram_available_bytes=memory.available,
            updated_at=time.time(),
        )
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.host(self.host), report.model_dump_json(), ex=REPORT_TTL_S)
            pipe.sadd(self.keys.hosts, self.host)
            pipe.execute()
        self._last_report = time.monotonic()

    # -- deciding -----------------------------------------------------------------

    def _wait_demand(self, wait: float) -> set[str]:
        popped = self.connection.blpop([self.keys.demand], timeout=wait)
        if popped is None:
            return set()
        raw: list[object] = [popped[1]]
        # Drain what else is waiting: many clients may have asked for the same model.
        while (more := self.connection.lpop(self.keys.demand)) is not None:
            raw.append(more)
        demanded = {r.decode() if isinstance(r, bytes) else str(r) for r in raw}
        return {m for m in demanded if m in self.catalog.models}

    def _models_waiting(self) -> set[str]:
        models = [m for m in self.catalog.models if m not in self.children]
        if not models:
            return set()
        with self.connection.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.llen(make_queue(self.connection, self.keys.queue_name(model)).key)
                pipe.exists(self.keys.alive(model))
            replies = pipe.execute()
        return {m for i, m in enumerate(models) if replies[2 * i] and not replies[2 * i + 1]}

    def _ensure_worker(self, model: str) -> None:
        if model in self.children:
            return
        crash = self.crashes.get(model)
        if crash is not None and (crash.count >= MAX_CRASHES or time.monotonic() < crash.not_before):
            return
        self._spawn(model)

    # -- processes ----------------------------------------------------------------

    def _spawn(self, model: str) -> None:
        cmd = worker_command(model, self.models_dir, self.redis_url, self.keys.prefix, self.host, *self.worker_args)
        # Own process group: a terminal's Ctrl-C reaches the supervisor, which then
        # stops workers in two stages instead of killing them mid-token.
        process = subprocess.Popen(cmd, start_new_session=True)
        self.children[model] = _Child(model, process, time.monotonic())
        log.info("started worker for %s (pid %d)", model, process.pid)

    def _reap(self) -> None:
        for model, child in list(self.children.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self.children[model]
            prefix = f"hostler.{self.host}.{model}.{child.process.pid}."
            orphans = fail_orphans(self.connection, self.keys.queue_name(model), prefix, self.keys.channel)
            if code == 0:
                self.crashes.pop(model, None)
                continue
            record = self.crashes.setdefault(model, _CrashRecord())
            record.count += 1
            backoff = min(MAX_BACKOFF_S, 0.5 * 2 ** (record.count - 1))
            record.not_before = time.monotonic() + backoff
            record.last_error = f"exit code {code}"
            log.warning(
                "worker for %s exited with %s (%d job(s) failed); crash %d, next start in %.1fs",
                model,
                code,
                orphans,
                record.count,
                backoff,
            )

    def shutdown(self, timeout: float = 15.0) -> None:
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self._reap()
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.delete(self.keys.host(self.host))
                pipe.srem(self.keys.hosts, self.host)
                pipe.execute()
        except redis.RedisError:
            pass
