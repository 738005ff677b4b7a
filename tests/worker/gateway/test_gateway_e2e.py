"""The official openai SDK against `hostler gateway` processes, a real worker and SmolLM2-135M-Instruct."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx
import openai
import pytest
import redis
from conftest import SMOL_MODEL, Stack
from gateway_proc import Gateway, Gateways
from hostler.client._rqstore import read_outcome
from hostler.schemas import CompletionResult
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

MODEL = SMOL_MODEL
MESSAGES = [{"role": "user", "content": "Name three colors of the rainbow."}]


def test_streamed_equals_whole_equals_the_python_client_through_the_sync_and_async_sdk(
    smol_stack: Stack, tmp_path: Path, gateways: Gateways
) -> None:
    gateway = gateways.start(smol_stack.url)
    params = {"max_tokens": 24, "temperature": 0}
    expected = smol_stack.client.chat(MODEL, MESSAGES, **params)
    assert expected.text

    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    whole = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, **params)  # type: ignore[arg-type]
    assert whole.choices[0].message.content == expected.text
    assert whole.choices[0].finish_reason == expected.finish_reason
    assert whole.usage is not None and whole.usage.completion_tokens == expected.usage.completion_tokens
    assert whole.usage.prompt_tokens == expected.usage.prompt_tokens and whole.object == "chat.completion"

    chunks = list(
        sdk.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            **params,  # type: ignore[arg-type]
        )
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    # The first piece goes out at once, later ones at most every 50 ms: 24 tokens at SmolLM2's
    # speed on a quiet machine make as few as 3 pieces (seen: 'The', then 6 and 9 tokens).
    assert len([p for p in pieces if p]) >= 3, "streamed in pieces, not all at once"
    assert "".join(pieces) == expected.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert len({c.id for c in chunks}) == 1

    async def through_async_sdk() -> tuple[str, str]:
        async_sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
        try:
            whole = await async_sdk.chat.completions.create(model=MODEL, messages=MESSAGES, **params)  # type: ignore[arg-type]
            stream = await async_sdk.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
                **params,  # type: ignore[arg-type]
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return whole.choices[0].message.content or "", streamed
        finally:
            await async_sdk.close()

    assert asyncio.run(through_async_sdk()) == (expected.text, expected.text)

    # Text completions, the same way.
    prompt = "The three primary colors are"
    plain = smol_stack.client.complete(MODEL, prompt, **params)
    text = sdk.completions.create(model=MODEL, prompt=prompt, **params)  # type: ignore[arg-type]
    assert text.choices[0].text == plain.text and text.usage is not None
    assert text.usage.total_tokens == plain.usage.total_tokens
    streamed = [c.choices[0].text for c in sdk.completions.create(model=MODEL, prompt=prompt, stream=True, **params)]  # type: ignore[arg-type]
    assert "".join(streamed) == plain.text

    # stop, seed and the llama.cpp extras reach the worker.
    stopped = sdk.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        stop=[expected.text.split()[1]],
        seed=7,
        extra_body={"top_k": 1, "min_p": 0.0, "repeat_penalty": 1.0},
        **params,  # type: ignore[arg-type]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert expected.text.startswith(stopped.choices[0].message.content or "")
    assert len(stopped.choices[0].message.content or "") < len(expected.text)
    capped = sdk.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_completion_tokens=3,
        temperature=0,
    )
    assert capped.usage is not None and capped.usage.completion_tokens == 3
    assert capped.choices[0].finish_reason == "length"


STREAMER = """
import sys, openai
sdk = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0)
for chunk in sdk.chat.completions.create(model=sys.argv[2], stream=True, max_tokens=2000, temperature=0,
        messages=[{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]):
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, flush=True)
"""


def test_a_client_killed_mid_stream_stops_the_generation(
    smol_stack: Stack, tmp_path: Path, gateways: Gateways, connection: redis.Redis
) -> None:
    gateway = gateways.start(smol_stack.url)
    client = subprocess.Popen(
        [sys.executable, "-c", STREAMER, gateway.base_url, MODEL], stdout=subprocess.PIPE, start_new_session=True
    )
    assert client.stdout is not None
    for _ in range(5):
        assert client.stdout.readline(), "the client got pieces"
    # The worker's report names its current job; it is refreshed every 2 s, so wait for it.
    job_id = None
    deadline = time.monotonic() + 10
    while job_id is None and time.monotonic() < deadline:
        job_id = next((w.current_job for w in smol_stack.client.status().workers if w.model == MODEL), None)
        time.sleep(0.1)
    assert job_id is not None
    client.send_signal(signal.SIGKILL)
    client.wait()
    killed_at = time.time()
    deadline = time.monotonic() + 15
    while (outcome := read_outcome(connection, job_id)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert outcome is not None and isinstance(outcome.result, CompletionResult), outcome
    assert outcome.result.finish_reason == "canceled" and outcome.result.usage.completion_tokens < 2000
    ended_at = connection.hget(f"rq:job:{job_id}", "ended_at")
    assert ended_at is not None
    ended = datetime.strptime(ended_at.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    # The worker notices within its 2 s listener grace, at its next token.
    assert ended - killed_at < 5, ended - killed_at
    # And serves the next request at once.
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=60)
    assert sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4).choices[0].message.content  # type: ignore[arg-type]


def test_a_gateway_restart_loses_no_queued_job(
    smol_stack: Stack, tmp_path: Path, gateways: Gateways, connection: redis.Redis
) -> None:
    first = gateways.start(smol_stack.url)
    # One slot: with more, the worker would start every request at once and none would wait.
    smol_stack.client.load(MODEL, n_parallel=1)
    smol_stack.client.complete(MODEL, "warm up", max_tokens=1)
    sdk = openai.OpenAI(base_url=first.base_url, api_key="unused", max_retries=0, timeout=120)

    def ask(i: int) -> str:
        reply = sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=24,
            temperature=0,
        )
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(ask, i) for i in range(4)]
        deadline = time.monotonic() + 30
        while smol_stack.client.queue_length(MODEL) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert smol_stack.client.queue_length(MODEL) >= 2, "requests wait in the queue"
        # The restart: SIGTERM lets the requests in flight finish; a new gateway takes new ones.
        first.process.send_signal(signal.SIGTERM)
        second = gateways.start(smol_stack.url)
        texts = [answer.result(timeout=120) for answer in answers]
    # uvicorn re-raises the SIGTERM once it has drained, so the exit reads as that signal.
    assert all(texts) and first.process.wait(30) in (0, -signal.SIGTERM)
    expected = [
        smol_stack.client.chat(
            MODEL, [{"role": "user", "content": f"Count to {i + 3}."}], max_tokens=24, temperature=0
        ).text
        for i in range(4)
    ]
    assert texts == expected
    again = openai.OpenAI(base_url=second.base_url, api_key="unused", max_retries=0, timeout=60)
    assert again.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4).choices[0].message.content  # type: ignore[arg-type]
    statuses = {connection.hget(key, "status") for key in connection.scan_iter("rq:job:*")}
    assert statuses == {b"finished"}


def scrape(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{gateway.url}/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_two_gateways_serve_the_same_models_and_the_same_metrics(
    smol_stack: Stack, tmp_path: Path, gateways: Gateways
) -> None:
    one = gateways.start(smol_stack.url)
    two = gateways.start(smol_stack.url)
    models = [httpx.get(f"{g.base_url}/models").json() for g in (one, two)]
    assert models[0] == models[1] and [m["id"] for m in models[0]["data"]] == [MODEL]
    smol_stack.client.complete(MODEL, "warm up", max_tokens=1)
    before = scrape(one)
    model = (("model", MODEL),)
    chat = (("kind", "chat"), ("model", MODEL))
    reply = openai.OpenAI(base_url=two.base_url, api_key="unused", max_retries=0).chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
    )
    assert reply.usage is not None
    after = scrape(one)
    finished = ("hostler_jobs_total", (("model", MODEL), ("outcome", "finished")))
    assert after[finished] == before[finished] + 1
    tokens = ("hostler_completion_tokens_total", model)
    assert after[tokens] == before[tokens] + reply.usage.completion_tokens
    prompt = ("hostler_prompt_tokens_total", model)
    assert after[prompt] == before[prompt] + reply.usage.prompt_tokens
    for name in ("hostler_time_to_first_token_seconds_count", "hostler_job_duration_seconds_count"):
        assert after[(name, chat)] == before.get((name, chat), 0) + 1
    assert after[("hostler_job_duration_seconds_sum", chat)] > 0
    assert after[("hostler_queue_length", model)] == 0 and after[("hostler_jobs_in_flight", model)] == 0
    assert after[("hostler_host_ram_total_bytes", (("host", "testhost"),))] > 0
    # The numbers live in Redis: the other gateway serves the same ones.
    other = scrape(two)
    for key in (finished, tokens, prompt, ("hostler_job_duration_seconds_count", chat)):
        assert other[key] == after[key]
