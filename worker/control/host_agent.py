"""The host agent: makes one machine's worker processes match what the controller assigned it.

It heartbeats the host's report (RAM, GPUs, models on disk with memory estimates, its
workers with pid and RSS) with a TTL, as a small state and a catalog rewritten only when the
models or hardware change (`host_report`), starts `hostler worker` for each model assigned to
this host, stops workers no longer assigned (the running job finishes first), and
restarts a crashed worker with backoff until it has crashed too often, after which the
model is reported as crashing instead of restarted forever.
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
from hostler.client._connection import URL_ENV
from hostler.client._errors import ConnectionFailed
from hostler.client._steps import run_sync
from hostler.schemas import Assignment, HardwareReport, HostReport, HostWorker, Keys, ModelInfo
from hostler.worker.engines.available import engine_availability
from hostler.worker.hardware import gpus
from hostler.worker.hardware.cpu import pin_process, usable_cores
from hostler.worker.hardware.cpu import probe as probe_hardware
from hostler.worker.memory.estimate import EstimateError, estimate
from hostler.worker.models.pull_agent import PullService
from hostler.worker.models.registry import Catalog, ModelManifest, scan
from hostler.worker.outage import REDIS_OUTAGE, OutageBackoff
from pydantic import ValidationError

from .cores import share_cores
from .endings import fail_orphans
from .host_report import write_report

log = logging.getLogger("hostler.host")

REPORT_EVERY_S = 2.0
RESCAN_EVERY_S = 5.0
MAX_BACKOFF_S = 30.0
# A model whose worker crashed this many times in a row is reported, not restarted.
MAX_CRASHES = 5


def worker_command(model: str, models_dir: Path, prefix: str, host: str, *extra: str) -> list[str]:
    """The command line of one model's worker process; its Redis URL comes by worker_env().

    -P (Python 3.11+) keeps the current directory off sys.path, so no folder named hostler
    where the agent was started can shadow the installed package.
    """
    python = [sys.executable, "-P"] if sys.version_info >= (3, 11) else [sys.executable]
    return [
        *python, "-m", "hostler.worker", "worker",
        "--model", model,
        "--models", str(models_dir),
        "--prefix", prefix,
        "--host-id", host,
        *extra,
    ]  # fmt: skip


def worker_env(redis_url: str, gpu: int | None = None) -> dict[str, str]:
    """A worker's environment: the agent's own plus the Redis URL, and the one GPU placement
    reserved memory on.

    Not on the command line: /proc/<pid>/cmdline (`ps`) is readable by every user of the
    machine, a process's environment only by its owner. CUDA numbers GPUs fastest first
    unless told to follow the PCI bus, as NVML (and so the host report) does.
    """
    env = {**os.environ, URL_ENV: redis_url}
    if gpu is not None:
        env.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=str(gpu))
    return env


@dataclass
class _Child:
    model: str
    process: subprocess.Popen[bytes]
    started: float
    stopping: bool = False
    cores: tuple[int, ...] = ()


@dataclass
class _CrashRecord:
    count: int = 0
    not_before: float = 0.0
    last_error: str = ""


@dataclass
class HostAgent:
    connection: redis.Redis
    keys: Keys
    # Out of the dataclass's repr: the URL may hold a password.
    redis_url: str = field(repr=False)
    models_dir: Path
    host: str = field(default_factory=socket.gethostname)
    max_memory: int | None = None
    worker_args: tuple[str, ...] = ()
    children: dict[str, _Child] = field(default_factory=dict)
    crashes: dict[str, _CrashRecord] = field(default_factory=dict)
    catalog: Catalog = field(default_factory=lambda: Catalog({}, []))
    _stop: threading.Event = field(default_factory=threading.Event)
    _estimates: dict[tuple[str, float], dict[str, object]] = field(default_factory=dict)
    _last_scan: float = 0.0
    _last_report: float = 0.0
    # The digest of the catalog this agent last wrote (None: none yet).
    _catalog_written: str | None = None
    # CPU, cores and engines do not change while the agent runs: probed once, at the first report.
    _hardware: HardwareReport | None = None
    _pulls: PullService | None = None
    # The cores the agent may use (its own affinity), divided among its workers.
    _cores: tuple[int, ...] = field(default_factory=usable_cores)

    # -- loop ---------------------------------------------------------------------

    def run(self) -> None:
        backoff = OutageBackoff(log, self._stop.wait)
        try:
            while not self._stop.is_set():
                try:
                    self.step()
                    backoff.succeeded()
                except REDIS_OUTAGE as exc:
                    backoff.failed(exc)
        finally:
            # Also when Redis refuses the credentials (ConnectionFailed): no worker outlives its agent.
            self.shutdown()

    def stop(self) -> None:
        self._stop.set()

    def step(self, wait: float = 0.5) -> None:
        now = time.monotonic()
        if self._pulls is None:
            self._pulls = PullService(self.connection, self.keys, self.host, self.models_dir)
        self._pulls.take()
        pulled = self._pulls.finished()
        if pulled or now - self._last_scan > RESCAN_EVERY_S:
            self.rescan()
        changed = self._reap()
        changed = self.reconcile() or changed
        if changed:
            self._divide_cores()
        # A worker started, stopped or gone changes what the controller may place here: say so now.
        if changed or pulled or time.monotonic() - self._last_report > REPORT_EVERY_S:
            self.report()
        # Only now that the report lists a pulled model does its client hear that the pull is done.
        self._pulls.announce(pulled)
        # A new assignment wakes this at once; otherwise it looks again after `wait`.
        if self.connection.blpop([self.keys.wake(self.host)], timeout=wait) is not None:
            self.connection.delete(self.keys.wake(self.host))

    def rescan(self) -> None:
        self.catalog = scan(self.models_dir)
        for problem in self.catalog.problems:
            log.warning("models: %s", problem)
        self._last_scan = time.monotonic()

    def report(self) -> None:
        memory = psutil.virtual_memory()
        if self._hardware is None:
            self._hardware = probe_hardware(engine_availability())
        gpus_now = gpus.probe()
        report = HostReport(
            host=self.host,
            pid=os.getpid(),
            models_dir=str(self.models_dir),
            models=[self._info(m) for m in self.catalog.models.values()],
            ram_total_bytes=memory.total,
            ram_available_bytes=memory.available,
            memory_limit_bytes=self.max_memory,
            gpus=gpus_now,
            workers=[w for c in self.children.values() if (w := _describe(c)) is not None],
            crashing={m: c.last_error for m, c in self.crashes.items() if c.count >= MAX_CRASHES},
            hardware=self._hardware.model_copy(update={"ram_available_bytes": memory.available, "gpus": gpus_now}),
            updated_at=time.time(),
        )
        self._catalog_written = run_sync(self.connection, write_report(self.keys, report, self._catalog_written))
        self._last_report = time.monotonic()

    def _info(self, manifest: ModelManifest) -> ModelInfo:
        info = manifest.info(self.host)
        reason = engine_availability().get(manifest.engine)
        if reason is not None:
            # Listed, so a person sees why, but never placed here (the controller reads this).
            info = info.model_copy(update={"available": False, "unavailable_reason": reason})
        try:
            stamp = manifest.path.stat().st_mtime
        except OSError:
            return info
        cached = self._estimates.get((str(manifest.path), stamp))
        if cached is None:
            try:
                found = estimate(manifest.path, manifest.engine, manifest.load)
                cached = {
                    "estimate_bytes": found.total_bytes,
                    "estimate": found.describe(),
                    "estimate_n_ctx": manifest.load.n_ctx,
                    "kv_bytes_per_cell": found.kv_bytes_per_cell,
                    "estimate_params": manifest.load,
                    "vram_estimate_bytes": found.vram_bytes,
                    "offload": found.offload,
                }
            except EstimateError as exc:
                log.warning("no memory estimate for %s: %s", manifest.id, exc)
                cached = {}
            self._estimates[(str(manifest.path), stamp)] = cached
        return info.model_copy(update=cached)

    # -- desired state ------------------------------------------------------------

    def assigned(self) -> dict[str, Assignment]:
        raw = self.connection.hgetall(self.keys.assignments(self.host))
        wanted: dict[str, Assignment] = {}
        for value in raw.values():
            try:
                assignment = Assignment.model_validate_json(value)
            except ValidationError:
                log.warning("ignoring an invalid assignment for %s: %.200r", self.host, value)
                continue
            wanted[assignment.model] = assignment
        return wanted

    def reconcile(self) -> bool:
        """Starts and stops workers to match the assignments; True when anything changed."""
        wanted = self.assigned()
        changed = False
        for model, child in self.children.items():
            if model not in wanted and not child.stopping:
                # First SIGTERM: the worker finishes its running job, then exits.
                child.process.send_signal(signal.SIGTERM)
                child.stopping = True
                changed = True
                log.info("stopping worker for %s (no longer assigned)", model)
        for model in list(self.crashes):
            if model not in wanted:
                del self.crashes[model]  # a later assignment gets a fresh start
        for model in sorted(wanted):
            if model in self.children or model not in self.catalog.models:
                continue
            crash = self.crashes.get(model)
            if crash is not None and (crash.count >= MAX_CRASHES or time.monotonic() < crash.not_before):
                continue
            self._spawn(model, wanted[model].gpu)
            changed = True
        return changed

    def _divide_cores(self) -> None:
        """Divides this agent's cores among its running workers, oldest first (workers size
        their llama.cpp threads by the cores they may use, and follow a change between steps)."""
        running = [child for child in self.children.values() if child.process.poll() is None]
        running.sort(key=lambda child: child.started)
        shares = share_cores(self._cores, [child.process.pid for child in running])
        for child in running:
            cores = shares[child.process.pid]
            if child.cores != cores and pin_process(child.process.pid, cores):
                child.cores = cores
                log.info("worker for %s runs on cores %s", child.model, ",".join(map(str, cores)))

    # -- processes ----------------------------------------------------------------

    def _spawn(self, model: str, gpu: int | None = None) -> None:
        cmd = worker_command(
            model, self.models_dir, self.keys.prefix, self.host, "--preload", "--exit-with-parent", *self.worker_args
        )
        # Own process group: a terminal's Ctrl-C reaches the agent, which then stops
        # workers in two stages instead of killing them mid-token.
        process = subprocess.Popen(cmd, env=worker_env(self.redis_url, gpu), start_new_session=True)
        self.children[model] = _Child(model, process, time.monotonic())
        log.info("started worker for %s (pid %d)", model, process.pid)

    def _reap(self) -> bool:
        """Ends the bookkeeping of exited workers; True when any had exited."""
        exited = False
        for model, child in list(self.children.items()):
            code = child.process.poll()
            if code is None:
                continue
            exited = True
            del self.children[model]
            prefix = f"hostler.{self.host}.{model}.{child.process.pid}."
            orphans = fail_orphans(self.connection, self.keys, model, prefix)
            if code == 0 or child.stopping:
                self.crashes.pop(model, None)
                continue
            record = self.crashes.setdefault(model, _CrashRecord())
            record.count += 1
            backoff = min(MAX_BACKOFF_S, 0.5 * 2 ** (record.count - 1))
            record.not_before = time.monotonic() + backoff
            record.last_error = f"worker exited with code {code} ({record.count} times in a row)"
            log.warning(
                "worker for %s exited with %s (%d job(s) failed); crash %d, next start in %.1fs",
                model,
                code,
                orphans,
                record.count,
                backoff,
            )
        return exited

    def shutdown(self, timeout: float = 15.0) -> None:
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
                child.stopping = True
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self._reap()
        try:
            # The host leaves at once, with its assignments, instead of waiting for its report's
            # TTL and a controller to bury it (on one machine no controller may be left to).
            with self.connection.pipeline() as pipe:
                pipe.delete(
                    self.keys.host(self.host),
                    self.keys.host_catalog(self.host),
                    self.keys.assignments(self.host),
                    self.keys.wake(self.host),
                )
                pipe.srem(self.keys.hosts, self.host)
                pipe.execute()
        except (redis.RedisError, ConnectionFailed):
            pass


def _describe(child: _Child) -> HostWorker | None:
    try:
        rss = psutil.Process(child.process.pid).memory_info().rss
    except psutil.Error:
        return None
    return HostWorker(model=child.model, pid=child.process.pid, rss_bytes=rss, stopping=child.stopping)
