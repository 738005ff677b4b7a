"""A Redis restart is a pause: every hostler process outlives it and queued jobs still run."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
from conftest import start_stack, stop_stack
from hostler.client._rqstore import fetch_job
from hostler.worker.embedded_redis import EmbeddedRedis, free_port

from hostler import CompletionResult

JOBS = 20
DOWN_S = 2.0


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_jobs_queued_before_a_redis_restart_finish_and_no_process_dies(tmp_path: Path, models_dir: Path) -> None:
    data_dir = tmp_path / "redis"
    port = free_port()
    # appendfsync always: every acknowledged enqueue is on disk when the server stops.
    server = EmbeddedRedis(port=port, data_dir=data_dir, persistent=True).start()
    stack = None
    try:
        stack = start_stack(server.url, models_dir, tmp_path / "up.log")
        client = stack.client
        assert client.complete("tiny", "x", max_tokens=2, temperature=0).usage.completion_tokens == 2
        up = psutil.Process(stack.process.pid)
        processes = {p: " ".join(p.cmdline()) for p in [up, *up.children(recursive=True)]}
        workers = stack.worker_pids("tiny")
        assert workers and set(workers) <= {p.pid for p in processes}, stack.output()

        # Long enough generations that most jobs are still waiting when the server goes away.
        handles = [client.submit("tiny", f"Story {i}:", max_tokens=64, temperature=0) for i in range(JOBS)]
        server.stop()  # SIGTERM: the server flushes its append-only file and exits
        stopped_at = time.time()
        time.sleep(DOWN_S)
        server = EmbeddedRedis(port=port, data_dir=data_dir, persistent=True).start()

        results = [handle.result(timeout=120) for handle in handles]
        assert all(isinstance(r, CompletionResult) and r.usage.completion_tokens > 0 for r in results)
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
        server.close()
