"""AsyncClient, job handles and map() end to end: `hostler up`, real workers, real llama.cpp."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import Stack
from hostler import AsyncClient, Client, CompletionResult, ContextExceeded, JobFailed
from hostler.client._rqstore import fetch_job, read_outcome

pytestmark = pytest.mark.e2e


def _prompt(i: int) -> str:
    # Lengths differ per input, so prompt_tokens tells which input a result belongs to.
    return "word " * (1 + i % 40) + f"item {i}"


def test_two_hundred_jobs_in_flight_from_one_process(stack: Stack) -> None:
    prompts = [_prompt(i) for i in range(200)]
    expected = {p: stack.client.count_tokens("tiny", p) for p in set(prompts)}
    sample = {i: stack.client.complete("tiny", prompts[i], max_tokens=4, temperature=0).text for i in (0, 77, 199)}

    async def main() -> tuple[list[CompletionResult], int]:
        async with AsyncClient(stack.url, timeout=300) as client:
            results = await asyncio.gather(*(client.complete("tiny", p, max_tokens=4, temperature=0) for p in prompts))
            # Every job shares one pub/sub connection: the pool stays small however many are in flight.
            connections = len(client.connection.connection_pool._available_connections) + len(
                client.connection.connection_pool._in_use_connections
            )
            return list(results), connections

    results, connections = asyncio.run(main())
    assert [r.usage.prompt_tokens for r in results] == [expected[p] for p in prompts]
    assert all(r.usage.completion_tokens == 4 for r in results)
    assert {i: results[i].text for i in sample} == sample
    assert connections <= 32


def test_async_stream_equals_complete_and_chat(stack: Stack) -> None:
    messages = [{"role": "user", "content": "Hi there"}]

    async def main() -> tuple[str, str, str, str, CompletionResult | None]:
        async with AsyncClient(stack.url, timeout=120) as client:
            whole = await client.complete("tiny", "Once upon a time", max_tokens=16, temperature=0)
            stream = await client.stream("tiny", "Once upon a time", max_tokens=16, temperature=0)
            pieces = [piece async for piece in stream]
            chat = await client.chat("tiny", messages, max_tokens=12, temperature=0)
            chat_stream = await client.chat("tiny", messages, stream=True, max_tokens=12, temperature=0)
            chat_pieces = "".join([piece async for piece in chat_stream])
            return whole.text, "".join(pieces), chat.text, chat_pieces, stream.result

    whole, streamed, chat, chat_streamed, final = asyncio.run(main())
    assert streamed == whole and whole
    assert chat_streamed == chat == stack.client.chat("tiny", messages, max_tokens=12, temperature=0).text
    assert final is not None and final.text == whole and final.usage.completion_tokens == 16


def test_async_errors_are_the_sync_client_errors(stack: Stack) -> None:
    async def main() -> None:
        async with AsyncClient(stack.url, timeout=60) as client:
            loaded = await client.load("tiny-ctx", n_ctx=64)
            assert loaded.params.n_ctx == 64
            with pytest.raises(ContextExceeded):
                await client.complete("tiny-ctx", "the farm " * 80, max_tokens=4)
            assert await client.count_tokens("tiny", "Once upon a time") == stack.client.count_tokens(
                "tiny", "Once upon a time"
            )
            assert {m.id for m in await client.models()} == {m.id for m in stack.client.models()}
            assert await client.queue_length("tiny") == 0

    asyncio.run(main())


def test_closing_an_async_stream_early_cancels_the_queued_job(stack: Stack) -> None:
    async def main() -> tuple[str, str, str]:
        async with AsyncClient(stack.url, timeout=120) as client:
            # One slot and a queue of long generations ahead of it, so the stream's job is still queued when
            # closed. The tiny model writes ~2,000 tokens/s and may stop at EOS, so one job ahead is not enough.
            await client.load("tiny", n_parallel=1)
            ahead = [
                await client.submit("tiny", "Once upon a time", priority="interactive", max_tokens=2000)
                for _ in range(40)
            ]
            stream = await client.stream("tiny", "Once", max_tokens=8)
            await stream.aclose()
            job_id = stream.job_id
            handle = await client.job(job_id)
            deadline = time.monotonic() + 20
            while await handle.status() == "queued" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            ended = [job.id for job in ahead if await job.status() not in ("queued", "started")]
            for job in ahead:
                await job.cancel()
            return await handle.status(), job_id, f"{len(ended)} of {len(ahead)} jobs ahead had ended"

    status, job_id, ahead = asyncio.run(main())
    assert status == "canceled", job_id
    # It never ran: no worker started it, and its one stored end is the cancel, with no result.
    job, outcome = fetch_job(stack.client.connection, job_id), read_outcome(stack.client.connection, job_id)
    assert job is not None, job_id
    seen = f"{job_id} started by {job.worker_name}; {ahead}"
    assert job.started_at is None and job.worker_name is None, seen
    assert outcome is not None and outcome.status == "canceled" and outcome.result is None, outcome
    assert stack.client.connection.xlen(f"rq:results:{job_id}") == 1, job_id


def test_submitted_jobs_reattach_by_id_and_stream(stack: Stack) -> None:
    handle = stack.client.submit("tiny", "Once upon a time", max_tokens=12, temperature=0, job_id="run1-doc-7")
    again = stack.client.submit("tiny", "Once upon a time", max_tokens=12, temperature=0, job_id="run1-doc-7")
    assert again.id == handle.id == "run1-doc-7"
    text = stack.client.job("run1-doc-7").result(timeout=60)
    assert isinstance(text, CompletionResult)
    # One job ran, not two: its record holds one result and the worker counted one job.
    assert stack.client.connection.xlen("rq:results:run1-doc-7") == 1

    streamed = stack.client.submit("tiny", "Once upon a time", max_tokens=12, temperature=0, stream=True)
    assert "".join(streamed.stream(timeout=60)) == text.text

    async def main() -> tuple[str, str, str]:
        async with AsyncClient(stack.url) as client:
            late = await client.job("run1-doc-7")
            status = await late.status()
            pieces = "".join([p async for p in late.stream(timeout=30)])
            fresh = await client.submit("tiny", "Once upon a time", max_tokens=12, temperature=0, stream=True)
            live = "".join([p async for p in fresh.stream(timeout=60)])
            return status, pieces, live

    status, pieces, live = asyncio.run(main())
    assert status == "finished" and pieces == text.text and live == text.text
    with pytest.raises(ValueError, match="invalid job id"):
        stack.client.submit("tiny", "x", job_id="../etc")


def test_map_yields_in_input_order_with_a_bounded_window(stack: Stack) -> None:
    prompts = [_prompt(i) for i in range(30)]
    expected = [stack.client.count_tokens("tiny", p) for p in prompts]
    seen: list[tuple[int, int | None]] = []
    lengths: list[int] = []

    def on_progress(done: int, total: int | None) -> None:
        seen.append((done, total))
        lengths.append(stack.client.queue_length("tiny"))

    results = list(stack.client.map("tiny", prompts, max_in_flight=4, on_progress=on_progress, max_tokens=3))
    assert [r.usage.prompt_tokens for r in results if isinstance(r, CompletionResult)] == expected
    assert seen == [(i, 30) for i in range(1, 31)]
    assert max(lengths) <= 4

    async def amap() -> list[CompletionResult | JobFailed]:
        async with AsyncClient(stack.url) as client:
            await client.load("tiny-ctx", n_ctx=64)
            inputs = [*prompts[:5], "the farm " * 80, *prompts[5:10]]
            return [r async for r in client.map("tiny-ctx", inputs, max_in_flight=3, return_exceptions=True)]

    mixed = asyncio.run(amap())
    assert [type(r).__name__ for r in mixed].count("ContextExceeded") == 1
    assert isinstance(mixed[5], ContextExceeded) and len(mixed) == 11


def test_closing_map_early_cancels_what_it_queued(stack: Stack) -> None:
    # One slot: most of the window is still queued when the map is closed.
    stack.client.load("tiny", n_parallel=1)
    connection = stack.client.connection

    def job_ids() -> set[str]:
        ids = (key.decode().removeprefix("rq:job:") for key in connection.scan_iter("rq:job:*"))
        return {job_id for job_id in ids if ":" not in job_id}

    before = job_ids()
    with Client(stack.url) as client:
        results = client.map("tiny", [_prompt(i) for i in range(50)], max_in_flight=10, max_tokens=200)
        next(results)
        results.close()
        assert client.queue_length("tiny") == 0
    # Submitted: the first input and the window of 10 behind it; the other 39 never were.
    ids = sorted(job_ids() - before)
    assert len(ids) == 11, ids
    # What a worker had taken runs to its end; wait for that, then nothing else may have run.
    deadline = time.monotonic() + 60
    while any(read_outcome(connection, job_id) is None for job_id in ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    outcomes = {job_id: read_outcome(connection, job_id) for job_id in ids}
    assert all(o is not None and o.status in ("finished", "canceled") for o in outcomes.values()), outcomes
    canceled = [job_id for job_id, o in outcomes.items() if o is not None and o.status == "canceled"]
    for job_id in canceled:
        outcome, job = outcomes[job_id], fetch_job(connection, job_id)
        assert outcome is not None and outcome.code == "canceled" and outcome.result is None, outcome
        # Never run: no worker started it, and its one stored end is the cancel's.
        assert job is not None and job.started_at is None and job.worker_name is None, job_id
        assert connection.xlen(f"rq:results:{job_id}") == 1, job_id
    # Not canceled: the first job, those the worker was running (its slots), and at most one it had
    # taken but not yet started when the close came.
    [worker] = stack.client.status().workers
    assert len(ids) - len(canceled) <= 1 + worker.slots + 1, (outcomes, worker.slots)
