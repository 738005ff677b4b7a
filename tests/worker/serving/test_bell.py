"""A busy worker hears enqueues on the bell's channel: no round trip per step while nothing
arrives, the ring left on the list for an idle replica, and a lost subscription made again
(a fake engine; the worker's own JobStore against a real Redis)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from fake_engine import FakeEngine
from hostler import Client
from hostler.client._connection import connect
from hostler.schemas import Keys
from hostler.worker.control.host_agent import HostAgent
from hostler.worker.models.registry import scan
from hostler.worker.serving import bell
from hostler.worker.serving.jobstore import JobStore
from hostler.worker.serving.worker import ModelWorker
from raw_jobs import push_raw

T = TypeVar("T")


@pytest.fixture
def store(redis_url: str, models_dir: Path, connection: redis.Redis) -> Iterator[JobStore]:
    agent = HostAgent(connection=connection, keys=Keys(), redis_url=redis_url, models_dir=models_dir, host="bellhost")
    agent.rescan()
    agent.report()
    worker = ModelWorker(
        connection=connect(redis_url),
        keys=Keys(),
        manifest=scan(models_dir).models["tiny"],
        engine_factory=FakeEngine,
        host="bellhost",
    )
    yield worker.store
    worker.store.give_back()
    worker.events.close()


def commands(connection: redis.Redis, *names: str) -> int:
    stats = connection.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names)


def until(look: Callable[[], T | None], timeout: float = 5.0) -> T | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = look()
        if found is not None:
            return found
        time.sleep(0.005)
    return None


@pytest.fixture
def client(redis_url: str) -> Iterator[Client]:
    with Client(redis_url, timeout=30) as client:
        yield client


@pytest.fixture
def busy(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> JobStore:
    """A store as a busy worker holds it after an empty look, hearing rings: only a ring may make
    it look, never the timer."""
    monkeypatch.setattr(bell, "LOOK_EVERY_S", 3600.0)
    # A look that finds nothing, then the first look after it, which subscribes.
    assert store.claim(timeout=0) is None
    assert store.claim(timeout=0) is None
    return store


def test_a_busy_worker_looks_only_after_a_ring_and_leaves_the_ring_for_idle_replicas(
    busy: JobStore, client: Client, connection: redis.Redis
) -> None:
    before = commands(connection, "evalsha", "eval", "lpop", "blpop")
    for _ in range(50):
        assert busy.claim(timeout=0) is None
    assert commands(connection, "evalsha", "eval", "lpop", "blpop") == before

    handle = client.submit("tiny", "x", max_tokens=2)
    claimed = until(lambda: busy.claim(timeout=0))
    assert claimed is not None and claimed.job.id == handle.id
    # The list's ring is still there: an idle replica blocked on it would have woken.
    assert connection.llen(Keys().bell("tiny")) == 1


def test_a_lost_subscription_is_made_again_and_hears_rings(
    busy: JobStore, client: Client, connection: redis.Redis
) -> None:
    assert connection.client_kill_filter(_type="pubsub") == 1
    # The broken subscription makes it look at once; it subscribes again on a later look.
    assert until(lambda: busy.claim(timeout=0), timeout=1.0) is None
    handle = client.submit("tiny", "x", max_tokens=2)
    claimed = until(lambda: busy.claim(timeout=0))
    assert claimed is not None and claimed.job.id == handle.id


def test_without_a_heard_ring_a_busy_worker_still_looks_on_a_timer(
    store: JobStore, connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bell, "LOOK_EVERY_S", 1.0)
    assert store._taken(timeout=0) is None
    assert store._taken(timeout=0) is None
    # Pushed as plain rq would: no ring on the list or the channel.
    job_id = push_raw(connection, "tiny", {"data": "{}"})
    assert store._taken(timeout=0) is None
    found = until(lambda: store._taken(timeout=0), timeout=3.0)
    assert found is not None and found[1] == job_id
