"""End to end on real processes: `hostler up`, real workers, real llama.cpp on tiny GGUFs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Stack
from hostler import Client, ContextExceeded, JobFailed, ModelNotFound, Timeout
from hostler.client._rqstore import fetch_job, make_queue
from hostler.worker.serving.ending import LISTENER_GRACE_S

pytestmark = pytest.mark.e2e


def test_complete_stream_and_count_agree(stack: Stack) -> None:
    client = stack.client
    result = client.complete("tiny", "Once upon a time", max_tokens=24, temperature=0)
    assert result.text and result.finish_reason == "length"
    assert result.usage.completion_tokens == 24
    pieces = list(client.stream("tiny", "Once upon a time", max_tokens=24, temperature=0))
    assert len(pieces) > 1 and "".join(pieces) == result.text
    assert client.count_tokens("tiny", "Once upon a time") == result.usage.prompt_tokens


def test_chat_applies_the_template_and_streams_the_same(stack: Stack) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    result = stack.client.chat("tiny", messages, max_tokens=16, temperature=0)
    streamed = "".join(stack.client.chat("tiny", messages, stream=True, max_tokens=16, temperature=0))
    assert streamed == result.text
    # The template adds role markers, so the prompt is longer than the words alone.
    words = stack.client.count_tokens("tiny", "Be brief. Hi there")
    assert result.usage.prompt_tokens > words


def test_stop_strings_end_generation_without_returning_them(stack: Stack) -> None:
    full = stack.client.complete("tiny", "Once upon a time", max_tokens=24, temperature=0).text
    stop = full.split()[3]
    cut = stack.client.complete("tiny", "Once upon a time", max_tokens=24, temperature=0, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]
    streamed = "".join(stack.client.stream("tiny", "Once upon a time", max_tokens=24, temperature=0, stop=stop))
    assert streamed == cut.text


def test_chat_without_a_template_is_a_clear_error(stack: Stack) -> None:
    with pytest.raises(JobFailed) as caught:
        stack.client.chat("tiny-base", [{"role": "user", "content": "hi"}])
    assert caught.value.code == "no_chat_template"
    assert "tiny-base" in caught.value.message and "model.yaml" in caught.value.message


@pytest.mark.parametrize("model", ["broken", "truncated"])
def test_invalid_gguf_fails_the_job_and_the_worker_survives(stack: Stack, model: str) -> None:
    for _ in range(2):
        with pytest.raises(JobFailed) as caught:
            stack.client.complete(model, "hi", max_tokens=4)
        assert caught.value.code == "load_failed"
    pids = stack.worker_pids(model)
    assert len(pids) == 1  # the same worker answered both: no crash loop
    assert stack.client.complete("tiny", "hi", max_tokens=2).usage.completion_tokens == 2


def test_prompt_longer_than_the_context_names_both_numbers(stack: Stack) -> None:
    stack.client.load("tiny", n_ctx=64)
    prompt = " ".join(["the farm"] * 80)
    n = stack.client.count_tokens("tiny", prompt)
    with pytest.raises(ContextExceeded) as caught:
        stack.client.complete("tiny", prompt, max_tokens=4)
    assert str(n) in caught.value.message and "64" in caught.value.message


def test_load_params_apply_until_unload(stack: Stack) -> None:
    loaded = stack.client.load("tiny", n_ctx=128)
    # The worker placed for this load already loads with its params: one load, not two.
    assert loaded.params.n_ctx == 128
    assert [w.loads for w in stack.client._worker_reports() if w.model == "tiny"] == [1]
    # 120 prompt tokens leave room for at most 8 more in a 128-token context.
    prompt = " ".join(["farm"] * 118)
    n = stack.client.count_tokens("tiny", prompt)
    assert n < 128
    result = stack.client.complete("tiny", prompt, max_tokens=100)
    assert result.usage.completion_tokens <= 128 - n
    assert [m.loaded for m in stack.client.models() if m.id == "tiny"] == [True]
    assert stack.client.unload("tiny").was_loaded
    deadline = time.monotonic() + 15
    while stack.worker_pids("tiny") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack.worker_pids("tiny") == []
    # a new job starts a new worker, with default params again
    assert stack.client.complete("tiny", prompt, max_tokens=100).usage.completion_tokens > 128 - n


def test_models_and_status(stack: Stack) -> None:
    ids = {m.id: m for m in stack.client.models()}
    assert {"tiny", "tiny-base", "broken"} <= set(ids)
    assert ids["tiny"].engine == "llama" and ids["tiny"].chat_template and not ids["tiny-base"].chat_template
    stack.client.complete("tiny", "hi", max_tokens=2)
    rows = [r for r in stack.client.status().workers if r.model == "tiny"]
    assert len(rows) == 1 and rows[0].pid > 0 and rows[0].rss_bytes > 0 and rows[0].queue_length == 0


def test_unknown_model_names_the_existing_ones(stack: Stack) -> None:
    with pytest.raises(ModelNotFound, match="tiny"):
        stack.client.complete("missing", "hi")


def test_timeout_is_raised_when_a_wait_runs_out(stack: Stack) -> None:
    with pytest.raises(Timeout) as caught:
        stack.client.complete("tiny", "Once", max_tokens=4000, timeout=0.3)
    # The message says what ran out (the call's timeout) and names what timed out: the job this
    # call enqueued, with its prompt.
    named = re.fullmatch(r"job (\w+) did not finish within its timeout", str(caught.value))
    assert named is not None, str(caught.value)
    record = fetch_job(stack.client.connection, named.group(1))
    assert record is not None and record.kwargs["prompt"] == "Once", named.group(1)


def test_rq_info_shows_hostler_queues_and_workers(stack: Stack) -> None:
    stack.client.complete("tiny", "hi", max_tokens=2)
    rq = Path(sys.executable).with_name("rq")
    out = subprocess.run(
        [str(rq), "info", "--url", stack.url], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "hostler:tiny" in out
    assert "hostler.testhost.tiny." in out


# A 16k context lets the tiny model generate for about 14 s, long enough that the
# generation is certainly still running when the test acts on it.
LONG_CTX = 16_384


def test_a_killed_worker_fails_its_job_and_the_next_job_is_served(stack: Stack) -> None:
    client = stack.client
    # One slot, so the second job waits in the queue (tests/worker/serving/test_batching_e2e.py kills a full batch).
    client.load("tiny", n_ctx=LONG_CTX, n_parallel=1)
    [pid] = stack.worker_pids("tiny")
    pieces = client.stream("tiny", "Once upon a time", max_tokens=LONG_CTX - 100, temperature=0.5)
    waiting = client.stream("tiny", "queued behind", max_tokens=5)
    first = next(pieces)
    assert first
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(JobFailed) as caught:
        for _ in pieces:
            pass
    assert caught.value.code == "worker_died"
    assert time.monotonic() - started < 10
    # The job behind it is served by a new worker.
    assert len("".join(waiting)) > 0
    assert stack.worker_pids("tiny") != [pid]
    failed = make_queue(client.connection, client.keys.queue_name("tiny")).failed_job_registry
    assert caught.value.job_id in failed.get_job_ids()


def test_a_stream_nobody_reads_is_stopped(stack: Stack) -> None:
    client = stack.client
    client.load("tiny", n_ctx=LONG_CTX)
    pieces = client.stream("tiny", "Once upon a time", max_tokens=LONG_CTX - 100, temperature=0.7)
    next(pieces)
    pieces.close()  # unsubscribes: the worker now publishes to nobody
    started = time.monotonic()
    after = client.complete("tiny", "next", max_tokens=3, timeout=60)
    assert after.usage.completion_tokens == 3
    assert time.monotonic() - started < LISTENER_GRACE_S + 5


def test_a_gap_in_events_is_filled_from_the_stored_result(stack: Stack, redis_url: str) -> None:
    """Pub/sub drops messages across reconnects; the client must not return truncated text."""
    whole = stack.client.complete("tiny", "Once upon a time", max_tokens=30, temperature=0).text
    lossy = Client(redis_url, timeout=60)
    dropped = threading.Event()
    real = lossy._pubsubs.acquire

    def acquire() -> object:
        pubsub = real()
        original = pubsub.get_message

        def get_message(**kwargs: object) -> object:
            message = original(**kwargs)  # type: ignore[arg-type]
            data = message["data"] if message and message["type"] == "message" else b""
            # The first token event goes at once and the rest within the stream interval after
            # it, so there is always a second one to lose.
            if not dropped.is_set() and b'"type":"token"' in data and b'"seq":1,' in data:
                dropped.set()
                return None
            return message

        pubsub.get_message = get_message  # type: ignore[method-assign]
        return pubsub

    lossy._pubsubs.acquire = acquire  # type: ignore[method-assign]
    text = "".join(lossy.stream("tiny", "Once upon a time", max_tokens=30, temperature=0))
    lossy.close()
    assert dropped.is_set()
    assert text == whole
