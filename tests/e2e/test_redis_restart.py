"""A Redis restart is a pause: every hostler process outlives it and queued jobs still run."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import psutil
import pytest
from conftest import start_stack, stop_stack
from hostler import CompletionResult, HostlerError, JobHandle
from hostler.client._rqstore import fetch_job
from hostler.worker.embedded_redis import EmbeddedRedis, free_port

pytestmark = pytest.mark.e2e

JOBS = 20
# Within redis-py's own retries (client/_connection.py, about 5 s): longer outages outlive the
# TTLs of host and worker heartbeats, which is a different failure than a restart.
DOWN_S = 2.0


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _outcome(handle: JobHandle, deadline: float) -> str:
    try:
        result = handle.result(timeout=max(1.0, deadline - time.monotonic()))
    except HostlerError as exc:
        return f"{type(exc).__name__}: {exc}"
    if isinstance(result, CompletionResult) and result.usage.completion_tokens > 0:
        return "finished"
    return repr(result)


def test_jobs_queued_before_a_redis_restart_finish_and_no_process_dies(tmp_path: Path, models_dir: Path) -> None:
    data_dir = tmp_path / "redis"
    port = free_port()
    # appendfsync always: every acknowledged enqueue is on disk when the server stops.
    server = EmbeddedRedis(port=port, data_dir=data_dir, persistent=True)
    stack = None
    processes: dict[psutil.Process, str] = {}
    try:
        server.start()
        stack = start_stack(server.url, models_dir, tmp_path / "up.log")
        client = stack.client
        # One slot: the jobs run one after another, so most are still queued when Redis stops.
        client.load("tiny", n_parallel=1)
        assert client.complete("tiny", "x", max_tokens=2, temperature=0).usage.completion_tokens == 2
        up = psutil.Process(stack.process.pid)
        processes.update({p: " ".join(p.cmdline()) for p in [up, *up.children(recursive=True)]})
        workers = stack.worker_pids("tiny")
        assert workers and set(workers) <= {p.pid for p in processes}, stack.output()

        # The server stops right after the last enqueue, while the worker is still early in the queue.
        handles = [client.submit("tiny", f"Story {i}:", max_tokens=64, temperature=0) for i in range(JOBS)]
        server.stop()  # SIGTERM: the server flushes its append-only file and exits
        stopped_at = time.time()
        time.sleep(DOWN_S)
        server = EmbeddedRedis(port=port, data_dir=data_dir, persistent=True)
        server.start()

        deadline = time.monotonic() + 120
        outcomes = [_outcome(handle, deadline) for handle in handles]
        assert outcomes == ["finished"] * JOBS, f"{outcomes}\n{stack.output()}"
        assert [h.status() for h in handles] == ["finished"] * JOBS
        ended = [job.ended_at for h in handles if (job := fetch_job(client.connection, h.id)) and job.ended_at]
        assert len(ended) == JOBS
        # Otherwise the worker could have run every job before the stop and the restart proved nothing.
        assert any(at.timestamp() > stopped_at for at in ended), "every job ended before Redis stopped"

        dead = [f"{p.pid}: {cmdline}" for p, cmdline in processes.items() if not _alive(p)]
        assert not dead, f"processes died across the restart: {dead}\n{stack.output()}"
        # The same worker, not a replacement the host agent started after a crash.
        assert stack.worker_pids("tiny") == workers, stack.output()
        assert client.complete("tiny", "after", max_tokens=3, temperature=0).usage.completion_tokens == 3
    finally:
        if stack is not None:
            stop_stack(stack)
        # Workers run in their own sessions, out of reach of stop_stack's process-group kill.
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        server.close()
