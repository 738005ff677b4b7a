"""The client core on a real Redis with no worker: typed keywords, waiting out a full queue,
and both clients following a job the same way (the test publishes the job's events itself)."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import threading
import time
import typing
from pathlib import Path

import pytest
import redis
from conftest import ROOT
from hostler import (
    AsyncClient,
    AsyncJobHandle,
    AsyncStream,
    Client,
    CompletionResult,
    HostlerError,
    JobHandle,
    LoadParams,
    QueueFull,
    SamplingParams,
    Stream,
)
from hostler.client._kwargs import LoadParamsKwargs, SamplingKwargs
from hostler.client._steps import run_sync
from hostler.client.summarize import Summarizer
from hostler.schemas import DoneEvent, HostReport, Keys, ModelInfo, TokenEvent, Usage
from hostler.worker.control.host_report import write_report


def _fields(model: type[SamplingParams] | type[LoadParams]) -> dict[str, object]:
    hints = typing.get_type_hints(model)  # Annotated bounds stripped: the types a caller passes
    return {name: hints[name] for name in model.model_fields}


def test_sampling_kwargs_are_the_fields_of_sampling_params() -> None:
    expected = _fields(SamplingParams)
    # The one widening: SamplingParams takes a bare string for a single stop sequence.
    expected["stop"] = list[str] | str
    assert typing.get_type_hints(SamplingKwargs) == expected


def test_load_params_kwargs_are_the_fields_of_load_params() -> None:
    assert typing.get_type_hints(LoadParamsKwargs) == _fields(LoadParams)


SNIPPET = """\
from hostler import AsyncClient, Client


def sync(client: Client) -> None:
    client.complete("m", "p", temperature=0, max_tokens=3, stop="\\n", timeout=5, retries=1)
    client.complete("m", "p", temprature=0)


async def asynchronous(client: AsyncClient) -> None:
    await client.submit("m", "p", seed=1, wait_when_full=True, job_id="x")
    await client.stream("m", "p", max_tokenz=3)
"""


def test_a_misspelt_sampling_parameter_fails_mypy(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    # The installed layout (hostler.client is client/, ...), as links: mypy cannot follow the
    # import hook of an editable install.
    package = tmp_path / "path" / "hostler"
    package.mkdir(parents=True)
    (package / "__init__.py").symlink_to(ROOT / "client" / "_top" / "__init__.py")
    (package / "client").symlink_to(ROOT / "client")
    (package / "schemas").symlink_to(ROOT / "schemas")
    (tmp_path / "snippet.py").write_text(SNIPPET)
    command = [sys.executable, "-m", "mypy", "--config-file=", "--strict", "--follow-imports=silent", "snippet.py"]
    env = {**os.environ, "MYPYPATH": str(tmp_path / "path")}
    checked = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert len(errors) == 2, checked.stdout
    assert errors[0].startswith("snippet.py:6:") and '"temprature"' in errors[0]
    assert errors[1].startswith("snippet.py:11:") and '"max_tokenz"' in errors[1]


def _api(cls: type) -> dict[str, list[str]]:
    """Public methods and properties, with their parameter names."""
    found = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or name in ("close", "aclose"):
            continue
        found[name] = list(inspect.signature(member).parameters) if callable(member) else []
    return found


def test_the_two_clients_offer_the_same_api() -> None:
    assert _api(Client) == _api(AsyncClient)
    assert _api(JobHandle) == _api(AsyncJobHandle)
    assert _api(Stream) == _api(AsyncStream)  # and both name their job_id, as tested below


# -- a full queue -------------------------------------------------------------------


def _announce(connection: redis.Redis, keys: Keys, model: str = "tiny") -> None:
    """A live host that has `model` on its disk, so that the client accepts jobs for it."""
    info = ModelInfo(id=model, engine="llama", path=f"/m/{model}.gguf", size_bytes=1, host="unit", chat_template=True)
    report = HostReport(
        host="unit", pid=1, models_dir="/m", models=[info], ram_total_bytes=2**30, ram_available_bytes=2**30,
        updated_at=time.time(),
    )  # fmt: skip
    run_sync(connection, write_report(keys, report, None))


@pytest.fixture
def full_queue(connection: redis.Redis) -> Keys:
    """Model `tiny`'s queue takes one waiting job; nothing runs it."""
    keys = Keys()
    _announce(connection, keys)
    connection.hset(keys.max_queue, "*", 1)
    return keys


def test_a_full_queue_raises_at_once_unless_the_call_waits_and_then_says_how_long(
    redis_url: str, full_queue: Keys
) -> None:
    with Client(redis_url, timeout=30) as client:
        client.submit("tiny", "first")
        started = time.monotonic()
        with pytest.raises(QueueFull) as refused:
            client.submit("tiny", "second")
        assert time.monotonic() - started < 1.0
        assert "wait_when_full" not in str(refused.value)
        # No worker reports a job time, so retry_after is 1 s: longer than this call may wait.
        with pytest.raises(QueueFull, match=r"gave up after waiting 0 s for room \(wait_when_full allows 0.3 s\)"):
            client.submit("tiny", "second", wait_when_full=0.3)
        assert client.queue_length("tiny") == 1


def test_wait_when_full_submits_once_there_is_room(redis_url: str, full_queue: Keys) -> None:
    with Client(redis_url, timeout=30) as client:
        first = client.submit("tiny", "first")
        threading.Timer(0.5, first.cancel).start()
        started = time.monotonic()
        second = client.submit("tiny", "second", wait_when_full=True)
        assert 0.5 <= time.monotonic() - started < 5.0
        assert first.status() == "canceled" and second.status() == "queued"


def test_async_wait_when_full_and_the_summarizer_s_bounded_wait(redis_url: str, full_queue: Keys) -> None:
    async def main() -> str:
        async with AsyncClient(redis_url, timeout=30) as client:
            first = await client.submit("tiny", "first")
            asyncio.get_running_loop().call_later(0.5, lambda: asyncio.ensure_future(first.cancel()))
            second = await client.submit("tiny", "second", wait_when_full=10)
            assert await second.status() == "queued"
            summarizer = Summarizer(client, "tiny", context=2048, wait_when_full=0.2)
            with pytest.raises(QueueFull) as refused:
                await summarizer._job([{"role": "user", "content": "a piece"}])
            return str(refused.value)

    assert "wait_when_full allows 0.2 s" in asyncio.run(main())


# -- following a job ----------------------------------------------------------------


def _publish(connection: redis.Redis, keys: Keys, job_id: str, pieces: list[str]) -> CompletionResult:
    """What a worker publishes for a streamed job: numbered pieces, then the whole result."""
    result = CompletionResult(
        model="tiny", text="".join(pieces), finish_reason="stop", usage=Usage(prompt_tokens=2, completion_tokens=3)
    )
    for seq, text in enumerate(pieces):
        connection.publish(keys.channel(job_id), TokenEvent(seq=seq, text=text).model_dump_json())
    connection.publish(keys.channel(job_id), DoneEvent(seq=len(pieces), result=result).model_dump_json())
    return result


def test_both_clients_streams_name_their_job_and_keep_its_result(redis_url: str, connection: redis.Redis) -> None:
    keys = Keys()
    _announce(connection, keys)
    with Client(redis_url, timeout=30) as client:
        stream = client.stream("tiny", "Once", max_tokens=3)
        assert stream.result is None and connection.exists(f"rq:job:{stream.job_id}")
        sent = _publish(connection, keys, stream.job_id, ["Once", " upon", " a"])
        assert list(stream) == ["Once", " upon", " a"]
        assert stream.result == sent

    async def main() -> tuple[list[str], CompletionResult | None, CompletionResult]:
        async with AsyncClient(redis_url, timeout=30) as client:
            stream = await client.stream("tiny", "Once", max_tokens=3)
            sent = _publish(connection, keys, stream.job_id, ["Once", " more"])
            return [piece async for piece in stream], stream.result, sent

    pieces, result, sent = asyncio.run(main())
    assert pieces == ["Once", " more"] and result == sent


def test_both_handles_wait_for_a_submitted_job_by_its_events(redis_url: str, connection: redis.Redis) -> None:
    keys = Keys()
    _announce(connection, keys)
    with Client(redis_url, timeout=30) as client:
        handle = client.submit("tiny", "Once", stream=True)
        threading.Timer(0.3, _publish, (connection, keys, handle.id, ["x", "y"])).start()
        assert handle.result(timeout=20) == CompletionResult(
            model="tiny", text="xy", finish_reason="stop", usage=Usage(prompt_tokens=2, completion_tokens=3)
        )

    async def main() -> str:
        async with AsyncClient(redis_url, timeout=30) as client:
            handle = await client.submit("tiny", "Once", stream=True)
            asyncio.get_running_loop().call_later(0.3, _publish, connection, keys, handle.id, ["p", "q"])
            result = await handle.result(timeout=20)
            assert isinstance(result, CompletionResult)
            return result.text

    assert asyncio.run(main()) == "pq"


def test_async_pull_is_the_sync_pull(redis_url: str) -> None:
    async def main() -> None:
        async with AsyncClient(redis_url) as client:
            with pytest.raises(HostlerError, match="no live host to pull on"):
                await client.pull("tester/Tiny-GGUF", quant="Q8_0")

    asyncio.run(main())
