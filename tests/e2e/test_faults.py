"""Faults done for real on `hostler up` with real llama.cpp workers: killed workers, killed
clients, runaway generations."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timezone

import pytest
from conftest import Stack
from hostler import CompletionResult, JobFailed
from hostler.client._rqstore import fetch_job, make_queue, read_outcome
from rq.job import JobStatus

pytestmark = pytest.mark.e2e

# Long enough that the tiny model is still generating when the test acts (about 14 s).
LONG_CTX = 16_384

CLIENT = """
import sys
from hostler import Client
client = Client(sys.argv[1], timeout=120)
for piece in client.stream("tiny", "Once upon a time", max_tokens=16000, temperature=0.7):
    print("piece", flush=True)
"""


def wait_status(stack: Stack, job_id: str, status: JobStatus, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = fetch_job(stack.client.connection, job_id)
        if job is not None and job.get_status(refresh=False) == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never became {status.value}")


def test_a_job_with_retries_survives_its_worker_being_killed(stack: Stack) -> None:
    client = stack.client
    # One slot: a long generation in a 16k context costs per token with every slot's KV cache.
    client.load("tiny", n_ctx=LONG_CTX, n_parallel=1)
    [pid] = stack.worker_pids("tiny")
    handle = client.submit("tiny", "Once upon a time", max_tokens=3000, temperature=0, retries=1)
    wait_status(stack, handle.id, JobStatus.STARTED)
    os.kill(pid, signal.SIGKILL)
    result = handle.result(timeout=120)
    assert isinstance(result, CompletionResult) and result.usage.completion_tokens > 0
    job = fetch_job(client.connection, handle.id)
    assert job is not None and job.retries_left == 0
    assert stack.worker_pids("tiny") not in ([], [pid])
    # At temperature 0 the retried run gives what an undisturbed run gives.
    again = client.complete("tiny", "Once upon a time", max_tokens=3000, temperature=0)
    assert again.text == result.text


def test_a_killed_client_stops_its_generation_and_the_worker_moves_on(stack: Stack) -> None:
    client = stack.client
    # One slot: a long generation in a 16k context costs per token with every slot's KV cache.
    client.load("tiny", n_ctx=LONG_CTX, n_parallel=1)
    reader = subprocess.Popen(
        [sys.executable, "-c", CLIENT, stack.url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().startswith(b"piece")
        [job_id] = make_queue(client.connection, client.keys.queue_name("tiny")).started_job_registry.get_job_ids()
        killed = time.time()
        reader.kill()
    finally:
        reader.kill()
        reader.wait(10)
    deadline = time.monotonic() + 30
    while read_outcome(client.connection, job_id) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    job = fetch_job(client.connection, job_id)
    assert job is not None and job.ended_at is not None
    stopped_after = job.ended_at.replace(tzinfo=timezone.utc).timestamp() - killed
    assert stopped_after < 3.0, f"the worker generated {stopped_after:.1f} s for a dead client"
    outcome = read_outcome(client.connection, job_id)
    assert outcome is not None and outcome.result is not None
    assert isinstance(outcome.result, CompletionResult) and outcome.result.finish_reason == "canceled"
    assert client.complete("tiny", "next", max_tokens=3).usage.completion_tokens == 3


def test_a_generation_past_its_job_timeout_fails_naming_it(stack: Stack) -> None:
    client = stack.client
    # One slot: a long generation in a 16k context costs per token with every slot's KV cache.
    client.load("tiny", n_ctx=LONG_CTX, n_parallel=1)
    started = time.monotonic()
    with pytest.raises(JobFailed) as caught:
        client.complete("tiny", "Once upon a time", max_tokens=LONG_CTX - 100, job_timeout=1.0)
    assert caught.value.code == "timeout"
    assert "timeout of 1 s" in caught.value.message
    assert time.monotonic() - started < 8
    assert client.complete("tiny", "next", max_tokens=3).usage.completion_tokens == 3
