"""The janitor with many queued jobs and many models (scripts/simulate_hosts.py measures it):
a lease pass reads a bounded slice of the leases, and the dead-worker sweep ends the jobs of
the models that have a dead worker without a pass of round trips over every model."""

from __future__ import annotations

import math
import time
from pathlib import Path

import redis
from hostler import Client
from hostler.client._rqstore import read_outcome
from hostler.schemas import ErrorCode, Keys, Lease
from hostler.worker.control.host_agent import HostAgent
from hostler.worker.control.janitor import LEASE_BATCH, Janitor
from rq.worker import Worker as RqWorker

KEYS = Keys()


def test_a_lapsed_lease_among_many_is_found_within_a_few_bounded_passes(
    redis_url: str, connection: redis.Redis, models_dir: Path
) -> None:
    agent = HostAgent(connection=connection, keys=KEYS, redis_url=redis_url, models_dir=models_dir, host="unit")
    agent.rescan()
    agent.report()
    others = 2 * LEASE_BATCH + 1000
    with connection.pipeline(transaction=False) as pipe:
        for i in range(others):
            job_id = f"waiting-{i}"
            lease = Lease(model="tiny", queue_key="rq:queue:hostler:tiny", start_by=True)
            pipe.hset(KEYS.leases, job_id, lease.model_dump_json())
            pipe.set(KEYS.start_by(job_id), "1", px=600_000)
        pipe.execute()
    with Client(redis_url, timeout=30) as client:
        handle = client.submit("tiny", "never run", start_within=0.05)
    time.sleep(0.2)
    janitor = Janitor(connection=connection, keys=KEYS)
    passes = 0
    while True:
        before = exists_calls(connection)
        if janitor.expire_leases():
            break
        # Two EXISTS a lease (its waiting key, its start deadline): a slice, not the whole hash.
        assert exists_calls(connection) - before <= 2 * 1.2 * LEASE_BATCH
        passes += 1
        assert passes <= math.ceil((others + 1) / LEASE_BATCH) + 1, "the lapsed lease was never looked at"
    outcome = read_outcome(connection, handle.id)
    assert outcome is not None and outcome.code == ErrorCode.EXPIRED
    # The others are still waiting; none was canceled by a pass that only saw part of the hash.
    assert connection.hlen(KEYS.leases) == others


def exists_calls(connection: redis.Redis) -> int:
    return int(connection.info("commandstats").get("cmdstat_exists", {}).get("calls", 0))


def register(connection: redis.Redis, model: str, name: str, *, alive: bool) -> None:
    """An rq registration of a hostler worker, with its hostler heartbeat key or without."""
    key = RqWorker.redis_worker_namespace_prefix + name
    connection.sadd(f"rq:workers:{KEYS.queue_name(model)}", key)
    connection.hset(key, mapping={"queues": KEYS.queue_name(model)})
    if alive:
        connection.set(KEYS.worker(name), "{}", ex=30)


def test_the_sweep_picks_only_the_models_with_a_dead_worker(connection: redis.Redis) -> None:
    models = [f"m{i:03d}" for i in range(300)]
    for model in models:
        connection.sadd("rq:queues", f"rq:queue:{KEYS.queue_name(model)}")
    register(connection, "m001", "hostler.a.m001.1.aaaaaa", alive=True)
    register(connection, "m002", "hostler.a.m002.2.bbbbbb", alive=False)
    # A started job whose worker is gone, on a model whose registration is already cleaned.
    connection.zadd(f"rq:wip:{KEYS.queue_name('m003')}", {"job-3:exec-1": time.time() + 60})
    connection.hset("rq:job:job-3", "worker_name", "hostler.b.m003.3.cccccc")
    # And one whose worker still heartbeats.
    connection.zadd(f"rq:wip:{KEYS.queue_name('m004')}", {"job-4:exec-1": time.time() + 60})
    connection.hset("rq:job:job-4", "worker_name", "hostler.a.m001.1.aaaaaa")
    janitor = Janitor(connection=connection, keys=KEYS)
    assert janitor.models() == models
    assert janitor._with_dead_workers(janitor.models()) == ["m002", "m003"]
