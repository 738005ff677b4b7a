"""Several host agents and controllers as real processes against one real Redis."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil
from hostler import Client
from hostler.schemas import Assignment, Keys

T = TypeVar("T")


@dataclass
class Cluster:
    url: str
    logs: Path
    client: Client
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def keys(self) -> Keys:
        return self.client.keys

    def _start(
        self, name: str, *args: str, env: dict[str, str] | None = None, cores: set[int] | None = None
    ) -> subprocess.Popen[bytes]:
        handle = (self.logs / f"{name}.log").open("ab")
        # An agent takes its own affinity for the machine's cores: pinned, it stands for a host of its own.
        pin = None if cores is None else lambda: os.sched_setaffinity(0, cores)
        # The URL by environment, never argv: `ps` shows every user a command line.
        process = subprocess.Popen(
            [sys.executable, "-m", "hostler.worker", "-v", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1", HOSTLER_REDIS_URL=self.url, **(env or {})),
            start_new_session=True,
            preexec_fn=pin,
        )
        handle.close()
        self.processes[name] = process
        return process

    def host(
        self,
        host_id: str,
        models_dir: Path,
        max_memory: int,
        env: dict[str, str] | None = None,
        cores: set[int] | None = None,
    ) -> subprocess.Popen[bytes]:
        process = self._start(
            host_id,
            "host",
            "--models",
            str(models_dir),
            "--host-id",
            host_id,
            "--max-memory",
            str(max_memory),
            env=env,
            cores=cores,
        )
        self.wait_for(lambda: self.client.connection.exists(self.keys.host(host_id)) or None, f"host {host_id}")
        return process

    def controller(self, name: str = "controller", *args: str) -> subprocess.Popen[bytes]:
        # A deployment runs a janitor beside its controllers (compose.yaml): it ends the jobs
        # of workers that died with their machine.
        if "janitor" not in self.processes:
            self._start("janitor", "janitor")
        return self._start(name, "controller", *args)

    def wait_for(self, probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n{self.output()}")

    def placements(self, model: str | None = None) -> list[Assignment]:
        return [a for a in self.client.status().placements if model is None or a.model == model]

    def hosts_of(self, model: str) -> list[str]:
        return sorted(a.host for a in self.placements(model))

    def loaded_on(self, model: str) -> list[str]:
        return sorted(w.host for w in self.client.status().workers if w.model == model and w.loaded)

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def output(self) -> str:
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        self.client.close()
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Workers of SIGKILLed agents end on their own; make sure none outlives the test.
        for worker in workers_of(self.url):
            with contextlib.suppress(psutil.Error):
                worker.kill()


def workers_of(url: str) -> list[psutil.Process]:
    """This user's `hostler worker` processes serving the Redis at `url` (read from their environment)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "hostler.worker" not in cmdline or "worker" not in cmdline:
            continue
        try:
            if process.environ().get("HOSTLER_REDIS_URL") == url:
                found.append(process)
        except psutil.Error:
            continue
    return found
