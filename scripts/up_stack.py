"""`hostler up` as a child process against a given Redis: started, announced, stopped.

The one way the tests (tests/conftest.py's `stack` fixture and the tests that start their own)
and scripts/soak.py start a whole stack, so what they run cannot drift apart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hostler import Client
from hostler.schemas import Keys

__all__ = ["HOST_ID", "Stack", "start_stack", "stop_stack"]

HOST_ID = "testhost"
START_S = 30.0
STOP_S = 30.0


@dataclass
class Stack:
    """`hostler up` running as a real process against a real Redis, with a client."""

    url: str
    models_dir: Path
    process: subprocess.Popen[bytes]
    client: Client
    log: Path

    @property
    def keys(self) -> Keys:
        return self.client.keys

    def worker_pids(self, model: str) -> list[int]:
        return [w.pid for w in self.client.status().workers if w.model == model]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_stack(
    url: str,
    models_dir: Path,
    log: Path,
    *,
    host_id: str = HOST_ID,
    verbose: bool = True,
    start_timeout: float = START_S,
    client_timeout: float = 120.0,
) -> Stack:
    """Starts `hostler up --models models_dir --no-demo` (output to log) and returns once its
    host has announced itself in Redis; raises RuntimeError with the log if it never does."""
    # The URL by environment, never argv: `ps` shows every user a command line.
    env = dict(os.environ, PYTHONUNBUFFERED="1", HOSTLER_REDIS_URL=url)
    command = [sys.executable, "-m", "hostler.worker", *(["-v"] if verbose else [])]
    command += ["up", "--models", str(models_dir), "--no-demo", "--host-id", host_id]
    with log.open("wb") as handle:
        # Own session: a terminal's Ctrl-C reaches only the caller, which stops it with SIGTERM.
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stack = Stack(url, models_dir, process, Client(url, timeout=client_timeout), log)
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        if stack.client.connection.exists(stack.keys.host(host_id)):
            return stack
        if process.poll() is not None:
            break
        time.sleep(0.05)
    stop_stack(stack)
    raise RuntimeError(f"hostler up did not announce itself:\n{stack.output()}")


def stop_stack(stack: Stack, timeout: float = STOP_S) -> None:
    """SIGTERM (running jobs finish, workers stop), then SIGKILL to the whole process group
    after timeout. Calling it again does nothing more."""
    stack.client.close()
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGTERM)
        try:
            stack.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(stack.process.pid, signal.SIGKILL)
            stack.process.wait()
