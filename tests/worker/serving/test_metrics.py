"""Job metrics recorded into Redis as jobs end: by the worker, the janitor and the controller's helpers.

The worker tests run a fake engine (worker logic only); the gateway's end-to-end tests
read the same hashes through /metrics with a real model.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from hostler import Client, ContextExceeded
from hostler.schemas import ErrorCode, Keys
from hostler.worker.control.endings import fail_queued
from hostler.worker.control.host_agent import HostAgent
from hostler.worker.control.janitor import Janitor
from hostler.worker.serving.metrics import DURATION_BUCKETS, JobMetrics, PieceClock, bucket_of, count_ended
from hostler.worker.serving.worker import ModelWorker

KEYS = Keys()


def fields(connection: redis.Redis, model: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in connection.hgetall(KEYS.metrics(model)).items()}


def test_buckets_take_each_value_at_or_below_their_bound() -> None:
    assert bucket_of("duration", 0.0) == "0.005"
    assert bucket_of("duration", 0.005) == "0.005"
    assert bucket_of("duration", 0.0051) == "0.01"
    assert bucket_of("duration", DURATION_BUCKETS[-1] + 1) == "+Inf"
    assert bucket_of("ttft", 0.3) == "0.5"


def test_one_job_end_is_one_increment_per_field_on_the_pipeline(connection: redis.Redis) -> None:
    metrics = JobMetrics(KEYS, "m1")
    clock = PieceClock()
    clock.started -= 0.3
    clock.first_piece = clock.started + 0.07
    result = {"kind": "completion", "finish_reason": "length", "usage": {"prompt_tokens": 5, "completion_tokens": 9}}
    with connection.pipeline(transaction=False) as pipe:
        metrics.finished(pipe, result, "chat", clock)
        queued = len(pipe.command_stack)
        pipe.execute()
    # sadd + jobs + 2 token counters + 2 per histogram.
    assert queued == 8
    with connection.pipeline(transaction=False) as pipe:
        metrics.finished(pipe, {**result, "finish_reason": "canceled"}, "chat", clock)
        metrics.ended(pipe, "failed", kind="completion", code="context_exceeded", ran_s=0.002)
        # The set is announced once per process; a stopped generation also counts its reason.
        assert len(pipe.command_stack) == 8 + 4
        pipe.execute()
    got = fields(connection, "m1")
    assert got["jobs:finished"] == "1" and got["jobs:canceled"] == "1" and got["jobs:failed"] == "1"
    assert got["code:stopped"] == "1" and got["code:context_exceeded"] == "1"
    assert got["tokens:prompt"] == "10" and got["tokens:completion"] == "18"
    assert got["ttft:chat:0.1"] == "2"
    assert got["duration:chat:0.5"] == "2" and got["duration:completion:0.005"] == "1"
    assert float(got["duration:chat:sum"]) == pytest.approx(0.6, abs=0.05)
    assert connection.smembers(KEYS.metric_models) == {b"m1"}


def test_jobs_ended_outside_a_worker_are_counted(connection: redis.Redis) -> None:
    count_ended(connection, KEYS, "m2", "canceled", ErrorCode.CLIENT_GONE)
    count_ended(connection, KEYS, "m2", "failed", ErrorCode.WORKER_DIED, 3)
    count_ended(connection, KEYS, "m2", "failed", ErrorCode.WORKER_DIED, 0)
    got = fields(connection, "m2")
    assert got == {"jobs:canceled": "1", "code:client_gone": "1", "jobs:failed": "3", "code:worker_died": "3"}


def test_the_worker_counts_every_job_end_with_its_tokens_and_timings(
    served: tuple[Client, ModelWorker], connection: redis.Redis
) -> None:
    client, _ = served
    completion = client.complete("tiny", "one two three", max_tokens=4)
    chat = client.chat("tiny", [{"role": "user", "content": "hi"}], max_tokens=3)
    streamed = "".join(client.stream("tiny", "a b", max_tokens=5))
    assert client.count_tokens("tiny", "a b c") == 4
    client.load("tiny", n_ctx=16)
    with pytest.raises(ContextExceeded):
        client.complete("tiny", " ".join(["w"] * 40), max_tokens=2)
    got = fields(connection, "tiny")
    assert got["jobs:finished"] == "5" and got["jobs:failed"] == "1"
    assert got["code:context_exceeded"] == "1"
    prompt = completion.usage.prompt_tokens + chat.usage.prompt_tokens + 3
    assert got["tokens:prompt"] == str(prompt)
    assert got["tokens:completion"] == str(4 + 3 + 5) and streamed == " w0 w1 w2 w3 w4"

    def count(histogram: str, kind: str) -> int:
        return sum(int(v) for k, v in got.items() if k.startswith(f"{histogram}:{kind}:") and not k.endswith(":sum"))

    assert count("ttft", "completion") == 2 and count("ttft", "chat") == 1
    assert count("duration", "completion") == 3 and count("duration", "chat") == 1
    assert count("duration", "token_count") == 1 and count("duration", "load") == 1
    assert float(got["ttft:completion:sum"]) <= float(got["duration:completion:sum"])


def test_the_janitor_counts_the_queued_jobs_it_cancels(redis_url: str, models_dir: Path) -> None:
    conn = redis.Redis.from_url(redis_url)
    agent = HostAgent(connection=conn, keys=KEYS, redis_url=redis_url, models_dir=models_dir, host="unit")
    agent.rescan()
    agent.report()
    with Client(redis_url, timeout=20) as client:
        # No worker serves `tiny`: the stream waits in the queue until its client leaves.
        stream = client.stream("tiny", "hello", max_tokens=2)
        stream.close()  # type: ignore[attr-defined]
    janitor = Janitor(connection=conn, keys=KEYS)
    assert janitor.expire_leases() == 1
    assert fields(conn, "tiny") == {"jobs:canceled": "1", "code:client_gone": "1"}
    assert fail_queued(conn, KEYS, "tiny", ErrorCode.NO_CAPACITY, "no room") == 0
    with Client(redis_url, timeout=20) as client:
        client.submit("tiny", "queued for nobody")
    assert fail_queued(conn, KEYS, "tiny", ErrorCode.NO_CAPACITY, "no room") == 1
    assert fields(conn, "tiny")["code:no_capacity"] == "1"
    conn.close()


def test_the_gateway_renders_the_hashes_as_prometheus_text(served: tuple[Client, ModelWorker], redis_url: str) -> None:
    pytest.importorskip("prometheus_client")
    from hostler import AsyncClient
    from hostler.worker.gateway.management import Management
    from hostler.worker.gateway.metrics_render import render
    from hostler.worker.gateway.settings import GatewaySettings
    from prometheus_client.parser import text_string_to_metric_families

    client, _ = served
    client.complete("tiny", "one two", max_tokens=6)
    client.chat("tiny", [{"role": "user", "content": "hi"}], max_tokens=2)

    async def scrape() -> bytes:
        async with AsyncClient(redis_url) as async_client:
            management = Management(async_client, GatewaySettings(redis_url=redis_url))
            return render(await management.snapshot())

    text = asyncio.run(scrape()).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    tiny = (("model", "tiny"),)
    assert samples[("hostler_jobs_total", (("model", "tiny"), ("outcome", "finished")))] == 2
    assert samples[("hostler_completion_tokens_total", tiny)] == 8
    chat = (("kind", "chat"), ("model", "tiny"))
    assert samples[("hostler_time_to_first_token_seconds_count", chat)] == 1
    assert samples[("hostler_job_duration_seconds_bucket", (*chat[:1], ("le", "+Inf"), ("model", "tiny")))] == 1
    assert samples[("hostler_queue_length", tiny)] == 0
    # Its state is the one of its last heartbeat (every 2 s): busy or idle.
    assert (
        sum(v for (name, labels), v in samples.items() if name == "hostler_workers" and ("model", "tiny") in labels)
        == 1
    )
    assert samples[("hostler_host_ram_total_bytes", (("host", "unit"),))] > 0


def test_a_refusal_decided_on_an_older_spec_fails_nothing(redis_url: str, models_dir: Path) -> None:
    """A load with other params writes its spec, then its job: the controller's refusal, decided on
    the spec it read before, must not fail that job with the old numbers, nor drop its spec."""
    conn = redis.Redis.from_url(redis_url)
    agent = HostAgent(connection=conn, keys=KEYS, redis_url=redis_url, models_dir=models_dir, host="unit")
    agent.rescan()
    agent.report()
    conn.set(KEYS.spec("tiny"), b'{"as": "written since"}')
    with Client(redis_url, timeout=20) as client:
        job = client.submit("tiny", "queued for nobody")
        assert fail_queued(conn, KEYS, "tiny", ErrorCode.NO_CAPACITY, "no room", spec_read=b'{"as": "read"}') is None
        assert client.queue_length("tiny") == 1 and job.status() == "queued"
        assert conn.get(KEYS.spec("tiny")) == b'{"as": "written since"}'
        spec_read = b'{"as": "written since"}'
        assert fail_queued(conn, KEYS, "tiny", ErrorCode.NO_CAPACITY, "no room", spec_read=spec_read) == 1
        assert client.queue_length("tiny") == 0 and job.status() == "failed"
        assert conn.get(KEYS.spec("tiny")) is None
    conn.close()
