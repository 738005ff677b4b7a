"""Continuous batching end to end: real `hostler up`, real llama.cpp on the tiny GGUF.

Several jobs of one model run in one worker at once; each ends on its own; a killed
worker ends every job it had in flight; the prompt cache is shared across jobs.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import datetime

import pytest
from conftest import Stack
from hostler import JobFailed
from hostler.client._rqstore import fetch_job
from hostler.schemas import WorkerStatus

pytestmark = pytest.mark.e2e

SLOTS = 4
# Long enough that the tiny model is certainly still generating when the test acts.
LONG = 4000


def _interval(stack: Stack, job_id: str) -> tuple[datetime, datetime]:
    job = fetch_job(stack.client.connection, job_id)
    assert job is not None and job.started_at is not None and job.ended_at is not None
    return job.started_at, job.ended_at


def test_jobs_of_one_model_run_together_in_one_worker(stack: Stack) -> None:
    client = stack.client
    client.load("tiny", n_ctx=8192, n_parallel=SLOTS)
    [pid] = stack.worker_pids("tiny")
    handles = [client.submit("tiny", f"Story number {i}:", max_tokens=400, temperature=0) for i in range(SLOTS)]
    results = [h.result(timeout=120) for h in handles]
    assert all(r.usage.completion_tokens == 400 for r in results)
    intervals = [_interval(stack, h.id) for h in handles]
    # Every job started before any of them ended: they were in flight together.
    assert max(start for start, _ in intervals) < min(end for _, end in intervals)
    assert stack.worker_pids("tiny") == [pid]
    [report] = [w for w in client.status().workers if w.model == "tiny"]
    assert report.slots == SLOTS


def test_one_canceled_stream_leaves_the_others_untouched(stack: Stack) -> None:
    client = stack.client
    # A context long enough that the abandoned stream cannot reach max_tokens within the listener grace.
    client.load("tiny", n_ctx=32_768, n_parallel=SLOTS)
    prompts = [f"Tale {i}:" for i in range(3)]
    alone = [client.complete("tiny", p, max_tokens=120, temperature=0).text for p in prompts]
    streams = [client.stream("tiny", p, max_tokens=120, temperature=0) for p in prompts]
    doomed = client.stream("tiny", "A long tale:", max_tokens=8 * LONG, temperature=0)
    assert next(doomed)
    doomed.close()  # the worker stops it within the listener grace; the others go on
    texts = ["".join(s) for s in streams]
    # Greedy decoding of the same prompt gives the same text whatever else is in the batch
    # (each slot's KV cells sit where a solo run puts them; see docs/architecture.md).
    assert texts == alone
    # The worker notices nobody listens within its listener grace (2 s) and ends the job.
    deadline = time.monotonic() + 15
    while (status := client.job(doomed.job_id).status()) == "started" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == "finished"
    result = client.job(doomed.job_id).result(timeout=5)
    assert result.finish_reason == "canceled" and result.usage.completion_tokens < 8 * LONG


def test_a_killed_worker_ends_every_job_it_had_in_flight(stack: Stack) -> None:
    client = stack.client
    client.load("tiny", n_ctx=8192, n_parallel=SLOTS)
    [pid] = stack.worker_pids("tiny")
    streams = [client.stream("tiny", f"Saga {i}:", max_tokens=LONG, temperature=0.5) for i in range(SLOTS)]
    for s in streams:
        assert next(s)
    os.kill(pid, signal.SIGKILL)
    codes = []
    for s in streams:
        with pytest.raises(JobFailed) as caught:
            for _ in s:
                pass
        codes.append(caught.value.code)
    assert codes == ["worker_died"] * SLOTS
    # A new worker serves what comes next.
    assert client.complete("tiny", "after", max_tokens=3, timeout=60).usage.completion_tokens == 3


def test_a_shared_prefix_is_evaluated_once(stack: Stack) -> None:
    client = stack.client
    client.load("tiny", n_ctx=4096, n_parallel=SLOTS)
    shared = "Instruction: summarize the following text in one line. " * 30
    first = client.complete("tiny", shared + "Text one.", max_tokens=4, temperature=0)
    before = _worker_report_after(stack, first.usage.prompt_tokens)
    second = client.complete("tiny", shared + "Text two.", max_tokens=4, temperature=0)
    after = _worker_report_after(stack, before.prompt_tokens_received + second.usage.prompt_tokens)
    received = after.prompt_tokens_received - before.prompt_tokens_received
    evaluated = after.prompt_tokens_evaluated - before.prompt_tokens_evaluated
    assert received == second.usage.prompt_tokens
    # All but the differing tail came from the cache of the first job.
    assert evaluated < received // 4, (received, evaluated, first.usage.prompt_tokens)


def _worker_report_after(stack: Stack, received: int) -> WorkerStatus:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        report = next(w for w in stack.client.status().workers if w.model == "tiny")
        if report.prompt_tokens_received >= received:
            return report
        time.sleep(0.2)
    raise AssertionError("the worker report never counted the second prompt")


def test_a_long_prompt_does_not_stall_the_streams_in_flight(stack: Stack) -> None:
    client = stack.client
    client.load("tiny", n_ctx=20_000, n_parallel=2)
    gaps: list[float] = []
    streaming = client.stream("tiny", "Steady:", max_tokens=LONG, temperature=0)
    assert next(streaming)
    stop = threading.Event()

    def read() -> None:
        last = time.monotonic()
        for _ in streaming:
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            if stop.is_set():
                break

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)
    long_prompt = "word " * 16_000
    started = time.monotonic()
    result = client.complete("tiny", long_prompt, max_tokens=1, temperature=0, timeout=300)
    prefill_s = time.monotonic() - started
    stop.set()
    reader.join(30)
    streaming.close()
    assert result.usage.prompt_tokens > 15_000
    during = gaps[: max(1, len(gaps))]
    # The 16k prompt is evaluated in chunks between the stream's tokens: no gap comes near
    # the whole prefill.
    assert max(during) < prefill_s / 4, (max(during), prefill_s)
