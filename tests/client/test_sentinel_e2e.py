"""Connections behind real Sentinels (scripts/sentinel_set.py): they follow a failover, refuse wrong
credentials at once, and an enqueue or a job's end waits for the replicas the URL asks for.

The whole system through a failover is tests/e2e/test_sentinel_failover.py."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fake_engine import FakeEngine
from hostler import AsyncClient, Client, ConnectionFailed, NotReplicated
from hostler.client._connection import connect, connect_async
from hostler.client._redis_url import mask_url
from hostler.schemas import Keys
from hostler.worker.control.host_agent import HostAgent
from hostler.worker.models.registry import scan
from hostler.worker.serving.worker import ModelWorker
from raw_jobs import ring_bell
from rq.job import Job as RqJob
from sentinel_set import SentinelSet, sentinel_set

# A failover is a real Redis outage of seconds.
pytestmark = pytest.mark.e2e


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[SentinelSet]:
    with sentinel_set(tmp_path / "sentinels") as running:
        yield running


def _announce_models(url: str, models_dir: Path) -> None:
    connection = connect(url)
    agent = HostAgent(connection=connection, keys=Keys(), redis_url=url, models_dir=models_dir, host="unit")
    agent.rescan()
    agent.report()
    connection.close()


def test_sync_and_async_connections_follow_a_failover(watched: SentinelSet) -> None:
    url = watched.url()
    sync = connect(url)
    sync.set("before", "1")
    assert sync.execute_command("WAIT", 2, 2000) == 2
    pubsub = sync.pubsub()
    pubsub.subscribe("news")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"

    async def use_async(stage: str) -> bytes | None:
        connection = connect_async(url)
        try:
            await connection.set(f"async-{stage}", stage)
            return await connection.get("before")
        finally:
            await connection.aclose()

    assert asyncio.run(use_async("before")) == b"1"
    # A command in flight when the primary dies is sent again to the promoted replica, not to
    # the dead address until redis-py's retries are spent.
    blocked = connect(url)
    in_flight: list[object] = []
    waiting = threading.Thread(target=lambda: in_flight.append(blocked.blpop(["nothing"], timeout=4)))
    waiting.start()
    time.sleep(0.3)
    watched.primary.kill()
    killed = time.monotonic()
    # The first write after the kill waits inside redis-py's retries until a replica is promoted.
    sync.set("after", "2")
    took = time.monotonic() - killed
    promoted = watched.current_primary()
    assert promoted is not None and promoted != watched.primary.port, watched.output()
    assert sync.get("before") == b"1" and took < 20, f"{took:.1f} s\n{watched.output()}"
    assert asyncio.run(use_async("after")) == b"1"
    waiting.join(30)
    assert in_flight == [None] and time.monotonic() - killed < 15, (in_flight, time.monotonic() - killed)
    blocked.close()
    # The subscription is made again on the new primary.
    deadline = time.monotonic() + 20
    heard = None
    while heard is None and time.monotonic() < deadline:
        sync.publish("news", "hello")
        with contextlib.suppress(redis.ConnectionError):
            message = pubsub.get_message(timeout=0.5)
            if message is not None and message["type"] == "message":
                heard = message["data"]
    assert heard == b"hello"
    pubsub.close()
    sync.close()


def test_refused_credentials_behind_sentinels_fail_at_once(tmp_path: Path) -> None:
    password = secrets.token_hex(8)
    with sentinel_set(tmp_path / "sentinels", replicas=1, password=password) as running:
        with connect(running.url()) as good:
            assert good.ping()
        wrong = secrets.token_hex(8)
        url = running.url(password=wrong)
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as refused, Client(url, timeout=30) as client:
            client.status()
        assert time.monotonic() - started < 2.0
        message = str(refused.value)
        assert "authentication failed" in message and mask_url(url) in message
        assert wrong not in message and password not in message


def test_an_enqueue_waits_for_the_replicas_the_url_asks_for(watched: SentinelSet, models_dir: Path) -> None:
    _announce_models(watched.url(), models_dir)
    with Client(watched.url("wait_replicas=2"), timeout=10) as client:
        handle = client.submit("tiny", "Hello", max_tokens=2)
        # WAIT 2 returned 2: both replicas hold the job the moment the caller hears of it.
        for replica in watched.replicas:
            with contextlib.closing(replica.client()) as direct:
                assert direct.exists(RqJob.key_for(handle.id))
    # Two replicas cannot confirm for three: the caller is told, and told which job.
    with Client(watched.url("wait_replicas=3&wait_timeout_ms=100"), timeout=10) as client:
        with pytest.raises(NotReplicated) as short:
            client.submit("tiny", "Hello", max_tokens=2)
        assert (short.value.confirmed, short.value.wanted) == (2, 3)
        assert client.connection.exists(RqJob.key_for(short.value.job_id))

    async def submit_async() -> None:
        async with AsyncClient(watched.url("wait_replicas=3&wait_timeout_ms=100"), timeout=10) as client:
            await client.submit("tiny", "Hello", max_tokens=2)

    with pytest.raises(NotReplicated):
        asyncio.run(submit_async())


def test_a_job_end_reaches_the_replicas_before_its_client_hears_of_it(watched: SentinelSet, models_dir: Path) -> None:
    url = watched.url("wait_replicas=2")
    _announce_models(url, models_dir)
    connection = connect(url)
    manifest = scan(models_dir).models["tiny"]
    worker = ModelWorker(connection=connection, keys=Keys(), manifest=manifest, engine_factory=FakeEngine, host="unit")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with Client(url, timeout=20) as client:
            for _ in range(3):
                stream = client.stream("tiny", "one two three", max_tokens=4)
                assert "".join(stream)
                key = RqJob.key_for(stream.job_id)
                for replica in watched.replicas:
                    with contextlib.closing(replica.client()) as direct:
                        assert direct.hget(key, "status") == b"finished"
                        # The end event is sent only while the job still names the worker that ended it.
                        assert direct.hget(key, "worker_name") == worker.name.encode()
    finally:
        worker.stop()
        ring_bell(connection, "tiny")
        thread.join(10)
        connection.close()
