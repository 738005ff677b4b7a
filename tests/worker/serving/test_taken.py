"""A worker frozen between taking a job and starting it, whose taken ids the janitor put back,
must not start that job too (a fake engine; the worker's own take and claim, step by step)."""

from __future__ import annotations

from pathlib import Path

import redis
from fake_engine import FakeEngine
from hostler import Client
from hostler.client._connection import connect
from hostler.schemas import Keys
from hostler.worker.control.host_agent import HostAgent
from hostler.worker.models.registry import scan
from hostler.worker.serving.taken import requeue_taken
from hostler.worker.serving.worker import ModelWorker


def test_a_job_put_back_before_its_taker_started_it_is_not_started_by_it(
    redis_url: str, models_dir: Path, connection: redis.Redis
) -> None:
    keys = Keys()
    agent = HostAgent(connection=connection, keys=keys, redis_url=redis_url, models_dir=models_dir, host="icebox")
    agent.rescan()
    agent.report()
    client = Client(redis_url, timeout=30)
    worker = ModelWorker(
        connection=connect(redis_url),
        keys=keys,
        manifest=scan(models_dir).models["tiny"],
        engine_factory=FakeEngine,
        host="icebox",
    )
    queue = keys.queue_name("tiny", "batch")
    try:
        handle = client.submit("tiny", "x", max_tokens=2)
        store = worker.store
        # The worker's take, as its run loop makes it; the claim that follows is held back.
        store._prefetched = taken = store._taken(timeout=1.0)
        assert taken is not None and taken[1] == handle.id
        # Meanwhile it was frozen long enough to be judged dead: its taken ids went back.
        assert requeue_taken(connection, keys, "tiny", worker.name) == 1

        assert store.claim(timeout=0.1) is None
        assert connection.hget(f"rq:job:{handle.id}", "status") == b"queued"
        assert connection.lrange(f"rq:queue:{queue}", 0, -1) == [handle.id.encode()]
        # Taken again from the queue, it starts once, as any queued job.
        claimed = store.claim(timeout=1.0)
        assert claimed is not None and claimed.job.id == handle.id
        assert connection.llen(f"rq:queue:{queue}") == 0
        assert connection.llen(keys.taken("tiny", worker.name)) == 0
    finally:
        worker.events.close()
        client.close()
