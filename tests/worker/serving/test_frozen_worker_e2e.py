"""A worker frozen (SIGSTOP) past its heartbeat while it generates, then thawed (SIGCONT).

While it was frozen the janitor judged it dead and failed its job (worker_died) or, with a
retry left, queued the job again for the other worker. Thawed, the worker must not overwrite
that outcome nor send the job a second end event; it drops the job instead of generating on
for nobody, and goes back to serving. Real llama.cpp workers (`hostler worker` processes),
real signals, the real janitor.

A worker frozen between taking a job and starting it is test_taken.py's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from hostler import Client
from hostler.client._rqstore import fetch_job, make_queue, read_outcome
from hostler.schemas import PRIORITIES, CompletionResult, Keys, LoadParams, WorkerReport
from hostler.worker.control.host_agent import HostAgent
from hostler.worker.control.janitor import Janitor
from rq.results import Result
from rq.serializers import JSONSerializer

pytestmark = pytest.mark.e2e

T = TypeVar("T")

# The tiny model makes about 1,000 tokens a second at this context: a run of MAX_TOKENS is
# still going long after the thaw, so a worker that generates on is told from one that drops.
LONG_CTX = 16_384
MAX_TOKENS = 8000


def eventually(probe: Callable[[], T | None], what: str, timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Channel:
    """Every event of one job's channel, subscribed to before the job is enqueued."""

    def __init__(self, url: str, channel: str) -> None:
        self._connection = redis.Redis.from_url(url)
        self._pubsub = self._connection.pubsub()
        self._pubsub.subscribe(channel)
        while (confirmed := self._pubsub.get_message(timeout=5)) is None or confirmed["type"] != "subscribe":
            pass
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is not None and message["type"] == "message":
                self.events.append(json.loads(message["data"]))

    def ends(self) -> list[str]:
        return [e["type"] for e in list(self.events) if e["type"] in ("done", "error")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._connection.close()


def start_worker(url: str, models_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hostler.worker", "-v", "worker", "--model", "tiny", "--models", str(models_dir)]
            + ["--host-id", "icebox", "--preload"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, HOSTLER_REDIS_URL=url, PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )


def reports(connection: redis.Redis, keys: Keys) -> dict[str, WorkerReport]:
    found = {}
    for raw in connection.smembers(keys.workers):
        blob = connection.get(keys.worker(raw.decode()))
        if blob is not None:
            report = WorkerReport.model_validate_json(blob)
            found[report.name] = report
    return found


def worker_of(connection: redis.Redis, job_id: str) -> str | None:
    name = connection.hget(f"rq:job:{job_id}", "worker_name")
    return name.decode() if name else None


def long_context_workers(connection: redis.Redis, keys: Keys) -> list[str]:
    return [
        name
        for name, report in reports(connection, keys).items()
        if report.loaded and (report.load_params or {}).get("n_ctx") == LONG_CTX
    ]


@pytest.fixture
def janitor(redis_url: str) -> Iterator[Janitor]:
    running = Janitor(connection=redis.Redis.from_url(redis_url), keys=Keys())
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    yield running
    running.stop()
    thread.join(10)


@pytest.mark.parametrize("retries", [0, 1], ids=["failed", "retried"])
def test_a_thawed_worker_leaves_the_janitors_outcome_alone_and_serves_on(
    retries: int,
    janitor: Janitor,
    redis_url: str,
    models_dir: Path,
    tmp_path: Path,
    connection: redis.Redis,
) -> None:
    keys = Keys()
    agent = HostAgent(connection=connection, keys=keys, redis_url=redis_url, models_dir=models_dir, host="icebox")
    agent.rescan()
    agent.report()
    client = Client(redis_url, timeout=120)
    processes: list[subprocess.Popen[bytes]] = []
    logs = lambda: "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("worker*.log")))  # noqa: E731
    job_id = f"frozen-{retries}"
    channel = Channel(redis_url, keys.channel(job_id))
    frozen: subprocess.Popen[bytes] | None = None
    try:
        for count in (1, 2):
            # One at a time: loading drops the remembered params, which the next worker reads.
            connection.set(keys.load_params("tiny"), LoadParams(n_ctx=LONG_CTX, n_parallel=1).model_dump_json())
            processes.append(start_worker(redis_url, models_dir, tmp_path / f"worker{count}.log"))
            eventually(lambda n=count: len(long_context_workers(connection, keys)) == n, f"{count} loaded workers", 60)
        by_pid = {p.pid: p for p in processes}
        client.submit(
            "tiny",
            "Once upon a time",
            max_tokens=MAX_TOKENS,
            temperature=0,
            retries=retries,
            stream=True,
            job_id=job_id,
        )
        eventually(lambda: any(e["type"] == "token" for e in channel.events), "the first token", 30)
        job = fetch_job(connection, job_id)
        assert job is not None and job.worker_name is not None
        frozen_name = job.worker_name
        frozen = by_pid[reports(connection, keys)[frozen_name].pid]
        [other] = [p for p in processes if p is not frozen]

        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            if retries:
                # Queued again and taken by the other worker, which is generating it as the frozen one thaws.
                retried_by = eventually(
                    lambda: runner if (runner := worker_of(connection, job_id)) != frozen_name else None,
                    "the janitor to queue the job again and the other worker to take it",
                    60,
                )
            else:
                eventually(lambda: read_outcome(connection, job_id), "the janitor to fail the job", 60)
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        thawed = time.time()

        def let_go() -> float | None:
            # When the thawed worker ended its part in the job, by its own clock (same machine).
            report = reports(connection, keys).get(frozen_name)
            ended = report.last_job_at if report is not None else None
            return ended - thawed if ended is not None and ended > thawed else None

        dropped_after = eventually(let_go, "the thawed worker to let go of the job", 60)
        outcome = eventually(lambda: read_outcome(connection, job_id), "the job's end", 120)
        time.sleep(1.0)  # room for a late second end event

        if retries:
            assert outcome.status == "finished", f"{outcome}\n{logs()}"
            assert isinstance(outcome.result, CompletionResult)
            assert outcome.result.usage.completion_tokens == MAX_TOKENS
            results = [r.worker_name for r in Result.all(job, serializer=JSONSerializer)]
            assert results == [retried_by], f"results stored by {results}; the frozen worker was {frozen_name}"
        else:
            assert (outcome.status, outcome.code) == ("failed", "worker_died"), f"{outcome}\n{logs()}"
            assert connection.xlen(f"rq:results:{job_id}") == 1
        assert channel.ends() == ["done" if retries else "error"], channel.ends()
        for priority in PRIORITIES:
            started = make_queue(connection, keys.queue_name("tiny", priority)).started_job_registry
            assert started.get_job_ids() == [], "an execution of the dropped run is still registered"
        assert dropped_after < 3.0, f"the thawed worker generated on for {dropped_after:.1f} s\n{logs()}"

        # The thawed worker is the only one left, and it still serves.
        other.send_signal(signal.SIGTERM)
        other.wait(30)
        agent.report()
        after = client.submit("tiny", "next", max_tokens=3, job_id=f"after-{retries}")
        result_after = after.result(timeout=60)
        assert isinstance(result_after, CompletionResult) and result_after.usage.completion_tokens == 3
        served = fetch_job(connection, after.id)
        assert served is not None and served.worker_name == frozen_name
    finally:
        if frozen is not None and frozen.poll() is None:
            os.kill(frozen.pid, signal.SIGCONT)
        channel.close()
        client.close()
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
