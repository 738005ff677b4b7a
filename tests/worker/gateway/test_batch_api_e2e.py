"""The Batch API over HTTP (/v1/files, /v1/batches) through the official openai SDK, against real
gateway processes in front of a real `hostler up` on the tiny generated GGUFs.

A batch outlives the gateway that accepted it: SIGKILLed mid-way, another gateway takes its
lease over and finishes it, each custom_id once in the output.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from conftest import Stack
from gateway_proc import Gateway, Gateways
from hostler import AsyncClient
from hostler.schemas import BatchObject, RequestCounts
from hostler.worker.gateway.batch_runner import EXPIRED_CODE, BatchRun
from hostler.worker.gateway.batch_store import BatchStore, FileStore
from openai.types import Batch

pytestmark = pytest.mark.e2e

CHAT_URL = "/v1/chat/completions"
WAIT_S = 120.0


def sdk_for(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)


def chat_line(custom_id: str, *, max_tokens: int = 8, model: str = "tiny", url: str = CHAT_URL) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"say {custom_id}"}], "max_tokens": max_tokens,
            "temperature": 0}  # fmt: skip
    if url != CHAT_URL:
        body = {"model": model, "prompt": f"say {custom_id}", "max_tokens": max_tokens}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(lines: list[Any]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def wait_for(sdk: openai.OpenAI, batch_id: str, statuses: set[str], timeout: float = WAIT_S) -> Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout} s: {batch}")


def lines_of(sdk: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in sdk.files.content(file_id).text.splitlines()]


def test_a_batch_through_the_sync_and_async_sdk_with_its_bad_lines_in_the_error_file(
    stack: Stack, tmp_path: Path, gateways: Gateways
) -> None:
    gateway = gateways.start(stack.url)
    sdk = sdk_for(gateway)
    good = [chat_line(f"c{i}") for i in range(5)]
    data = jsonl([
        good[0], "{not json", good[1], chat_line("elsewhere", url="/v1/nowhere"), good[2],
        chat_line("ghost", model="nope"), chat_line("text", url="/v1/completions"), good[3], good[0], good[4],
    ])  # fmt: skip
    uploaded = sdk.files.create(file=("requests.jsonl", data), purpose="batch")
    assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == ("batch", len(data), "requests.jsonl")
    assert sdk.files.retrieve(uploaded.id) == uploaded
    assert sdk.files.content(uploaded.id).read() == data

    created = sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT_URL, completion_window="24h",
                                 metadata={"run": "sync"})  # fmt: skip
    assert created.status == "validating" and created.metadata == {"run": "sync"}
    assert created.request_counts is not None and created.request_counts.total == 10
    batch = wait_for(sdk, created.id, {"completed", "failed"})
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (10, 5, 5)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.expires_at
    assert created.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.usage is not None and batch.usage.input_tokens > 0 and batch.usage.output_tokens > 0

    output = lines_of(sdk, batch.output_file_id)
    assert [line["custom_id"] for line in output] == [f"c{i}" for i in range(5)]
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and isinstance(body["choices"][0]["message"]["content"], str)
    errors = lines_of(sdk, batch.error_file_id)
    messages = {line["custom_id"]: line["error"]["message"] for line in errors}
    assert [line["error"]["line"] for line in errors] == [2, 4, 6, 7, 9]
    assert "not JSON" in messages[None]
    assert "/v1/nowhere" in messages["elsewhere"]
    assert "'nope'" in messages["ghost"] and "tiny" in messages["ghost"]
    assert "endpoint" in messages["text"]
    assert "duplicate custom_id 'c0'" in messages["c0"]
    assert {line["error"]["code"] for line in errors if line["custom_id"] == "ghost"} == {"model_not_found"}

    assert created.id in [b.id for b in sdk.batches.list(limit=10).data]
    with pytest.raises(openai.BadRequestError, match="is completed"):
        sdk.batches.cancel(created.id)
    assert sdk.files.retrieve(batch.output_file_id).purpose == "batch_output"  # type: ignore[arg-type]
    assert sdk.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError, match=uploaded.id):
        sdk.files.retrieve(uploaded.id)

    async def through_async_sdk() -> list[dict[str, Any]]:
        async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as client:
            file = await client.files.create(file=("more.jsonl", jsonl(good[:3])), purpose="batch")
            started = await client.batches.create(input_file_id=file.id, endpoint=CHAT_URL, completion_window="24h")
            deadline = time.monotonic() + WAIT_S
            while (done := await client.batches.retrieve(started.id)).status != "completed":
                assert time.monotonic() < deadline and done.status in ("validating", "in_progress", "finalizing")
                await asyncio.sleep(0.1)
            assert done.output_file_id is not None and done.error_file_id is None
            content = await client.files.content(done.output_file_id)
            return [json.loads(line) for line in content.text.splitlines()]

    again = asyncio.run(through_async_sdk())
    assert [line["custom_id"] for line in again] == ["c0", "c1", "c2"]
    assert all(line["response"]["status_code"] == 200 for line in again)
    assert "Traceback" not in gateway.output()


def test_a_batch_goes_on_when_the_gateway_that_accepted_it_is_killed(
    stack: Stack, tmp_path: Path, gateways: Gateways, connection: redis.Redis
) -> None:
    first = gateways.start(stack.url, "--batch-in-flight", "2")
    second = gateways.start(stack.url)
    total = 40
    data = jsonl([chat_line(f"r{i:02d}", max_tokens=48) for i in range(total)])
    sdk = sdk_for(first)
    file = sdk.files.create(file=("long.jsonl", data), purpose="batch")
    batch = sdk.batches.create(input_file_id=file.id, endpoint=CHAT_URL, completion_window="24h")
    deadline = time.monotonic() + WAIT_S
    while True:
        seen = sdk.batches.retrieve(batch.id)
        assert seen.request_counts is not None
        if seen.request_counts.completed >= 2:
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.02)
    assert seen.request_counts.completed < total, "the batch ended before the gateway could be killed mid-way"
    # The gateway that accepted it runs it (it looks at once after a create; the other once a second).
    holder = connection.get(f"hostler:openai-batch:{batch.id}:lease")
    assert holder is not None and f":{first.process.pid}:" in holder.decode()
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(10)
    killed_at = time.monotonic()
    # The lease (10 s) lapses and the second gateway's next look (every second) takes the batch over.
    while "resumed here" not in second.output():
        assert time.monotonic() - killed_at < 20, second.output()
        time.sleep(0.1)
    print(f"taken over {time.monotonic() - killed_at:.1f} s after the kill, "
          f"{seen.request_counts.completed} of {total} requests done by then")  # fmt: skip

    # The second gateway takes the lapsed lease over and finishes the batch.
    survivor = sdk_for(second)
    done = wait_for(survivor, batch.id, {"completed", "failed", "cancelled", "expired"})
    assert done.status == "completed", done
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (total, 0)
    output = lines_of(survivor, done.output_file_id)
    custom_ids = [line["custom_id"] for line in output]
    assert sorted(custom_ids) == [f"r{i:02d}" for i in range(total)] and len(set(custom_ids)) == total
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert "Traceback" not in second.output()
    # Each request ran as one job: the same job id on both gateways, never queued twice.
    finished = int(connection.hget("hostler:metrics:tiny", "jobs:finished") or 0)
    assert finished == total, finished


def test_a_cancelled_batch_runs_no_more_of_its_requests(stack: Stack, tmp_path: Path, gateways: Gateways) -> None:
    gateway = gateways.start(stack.url, "--batch-in-flight", "1")
    sdk = sdk_for(gateway)
    total = 30
    file = sdk.files.create(file=("c.jsonl", jsonl([chat_line(f"k{i}", max_tokens=32) for i in range(total)])),
                            purpose="batch")  # fmt: skip
    batch = sdk.batches.create(input_file_id=file.id, endpoint=CHAT_URL, completion_window="24h")
    deadline = time.monotonic() + WAIT_S
    while (seen := sdk.batches.retrieve(batch.id)).request_counts is None or seen.request_counts.completed < 1:
        assert time.monotonic() < deadline, seen
        time.sleep(0.02)
    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = wait_for(sdk, batch.id, {"cancelled", "completed"})
    assert done.status == "cancelled" and done.cancelled_at, done
    assert done.request_counts is not None and 1 <= done.request_counts.completed < total
    assert done.request_counts.failed == 0, "requests that never ran are in neither file"
    output = lines_of(sdk, done.output_file_id)
    assert len(output) == done.request_counts.completed == len({line["custom_id"] for line in output})
    assert stack.client.queue_length("tiny") == 0
    assert sdk.batches.cancel(batch.id).status == "cancelled"  # a second cancel changes nothing
    with pytest.raises(openai.NotFoundError):
        sdk.batches.cancel("batch_nothing")


def test_file_and_batch_limits_are_answered_naming_the_limit(
    redis_url: str, tmp_path: Path, gateways: Gateways
) -> None:
    gateway = gateways.start(redis_url, "--max-file-bytes", "2048", "--max-files", "3",
                          "--max-stored-bytes", "2000", "--max-batch-lines", "3")  # fmt: skip
    sdk = sdk_for(gateway)
    with pytest.raises(openai.APIStatusError, match="2048 bytes per file") as too_big:
        sdk.files.create(file=("big.jsonl", b"x" * 2049), purpose="batch")
    assert too_big.value.status_code == 413 and too_big.value.code == "file_too_large"
    # Over even the upload's own body limit: refused before the body is read.
    response = httpx.post(
        f"{gateway.base_url}/files", files={"file": ("huge", b"x" * 200_000)}, data={"purpose": "batch"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

    four = jsonl([chat_line(f"q{i}") for i in range(4)])
    assert 600 < len(four) < 1500
    first = sdk.files.create(file=("four.jsonl", four), purpose="batch")
    second = sdk.files.create(file=("four.jsonl", four), purpose="batch")
    with pytest.raises(openai.APIStatusError, match="2000 bytes for all files") as full:
        sdk.files.create(file=("four.jsonl", four), purpose="batch")
    assert full.value.status_code == 413 and full.value.code == "storage_full"
    small = jsonl([chat_line("s")])
    sdk.files.create(file=("one.jsonl", small), purpose="batch")
    with pytest.raises(openai.APIStatusError, match="--max-files 3") as many:
        sdk.files.create(file=("one.jsonl", small), purpose="batch")
    assert many.value.status_code == 413 and many.value.code == "too_many_files"
    assert len(sdk.files.list().data) == 3

    with pytest.raises(openai.BadRequestError, match="holds 4 requests, over the limit of 3"):
        sdk.batches.create(input_file_id=first.id, endpoint=CHAT_URL, completion_window="24h")
    sdk.files.delete(second.id)
    sdk.files.create(file=("one.jsonl", small), purpose="batch")

    with pytest.raises(openai.NotFoundError, match="file-nothing"):
        sdk.batches.create(input_file_id="file-nothing", endpoint=CHAT_URL, completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="/v1/moderations"):
        sdk.batches.create(input_file_id=first.id, endpoint="/v1/moderations", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        sdk.batches.create(input_file_id=first.id, endpoint=CHAT_URL, completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="purpose"):
        sdk.files.create(file=("one.jsonl", small), purpose="assistants")
    not_multipart = httpx.post(f"{gateway.base_url}/files", json={"purpose": "batch"})
    assert not_multipart.status_code == 400 and "multipart/form-data" in not_multipart.json()["error"]["message"]
    bad_limit = httpx.get(f"{gateway.base_url}/batches", params={"limit": "0"})
    assert bad_limit.status_code == 400 and bad_limit.json()["error"]["param"] == "limit"
    assert "Traceback" not in gateway.output()


def test_a_batch_whose_window_closed_expires_with_the_rest_in_the_error_file(stack: Stack) -> None:
    """The 24 h window is too long to wait out: a batch is stored as created 25 h ago, one request
    done, and a runner (the gateway's own, in this process) takes it."""

    async def main() -> None:
        async with AsyncClient(stack.url) as client:
            files = FileStore(client.connection, client.keys, max_file_bytes=4096, max_files=4, max_bytes=8192)
            batches = BatchStore(client.connection, client.keys)
            meta = await files.upload("late.jsonl", jsonl([chat_line("e0"), chat_line("e1"), chat_line("e2")]))
            created = int(time.time()) - 25 * 3600
            batch = BatchObject(id="batch_late", endpoint=CHAT_URL, input_file_id=meta.id, created_at=created,
                                expires_at=created + 24 * 3600, status="in_progress", in_progress_at=created,
                                request_counts=RequestCounts(total=3, completed=0, failed=0))  # fmt: skip
            await batches.create(batch)
            assert await batches.record(batch.id, output=True, field="e0", line='{"custom_id": "e0"}', tokens=(1, 1))
            await BatchRun(client, files, batches, batch.id, max_in_flight=4).drive()
            ended = await batches.get(batch.id)
            assert ended.status == "expired" and ended.expired_at and ended.finalizing_at, ended
            assert (ended.request_counts.completed, ended.request_counts.failed) == (1, 2)
            assert ended.output_file_id is not None and ended.error_file_id is not None
            errors = [json.loads(line) for line in (await files.content(ended.error_file_id)).splitlines()]
            assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
                ("e1", EXPIRED_CODE),
                ("e2", EXPIRED_CODE),
            ]
            assert await files.content(ended.output_file_id) == b'{"custom_id": "e0"}\n'
            assert await client.queue_length("tiny") == 0, "nothing was queued for a closed window"

    asyncio.run(main())
