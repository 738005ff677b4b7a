"""`hostler gateway` as a real process on a free port, for the gateway tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def start_gateway(
    redis_url: str, log: Path, *args: str, env: dict[str, str] | None = None, verbose: bool = False
) -> Gateway:
    port = free_port()
    handle = log.open("ab")
    # The URL by environment, never argv: `ps` shows every user a command line.
    process = subprocess.Popen(
        [sys.executable, "-m", "hostler.worker", *(["-v"] if verbose else []), "gateway", "--port", str(port), *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "HOSTLER_REDIS_URL": redis_url, **(env or {})},
        start_new_session=True,
    )
    handle.close()
    gateway = Gateway(process, port, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{gateway.url}/health", timeout=2).status_code == 200:
                return gateway
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    gateway.stop()
    raise RuntimeError(f"the gateway did not come up:\n{gateway.output()}")


class Gateways:
    """The gateways one test starts, each with its own log; `stop_all` ends every one."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Gateway] = []

    def start(self, redis_url: str, *args: str, env: dict[str, str] | None = None) -> Gateway:
        gateway = start_gateway(redis_url, self.log_dir / f"gateway{len(self.started)}.log", *args, env=env)
        self.started.append(gateway)
        return gateway

    def stop_all(self) -> None:
        for gateway in self.started:
            gateway.stop()
