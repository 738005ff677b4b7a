"""Jobs written into Redis by hand, as another tool (or an attacker) could, and waiting for their end."""

from __future__ import annotations

import time
import uuid

import redis
from hostler.client._rqstore import make_queue, read_outcome
from hostler.schemas import Keys


def push_raw(conn: redis.Redis, model: str, fields: dict[str, bytes | str], *, ring: bool = False) -> str:
    """Writes a job record and queue entry by hand, as another tool (or an attacker) could.

    Like plain rq, it leaves the bell alone: an idle worker finds the job at its next look (within
    1 s). ring=True rings it as hostler's own enqueue does, so the worker takes the job at once.
    """
    job_id = uuid.uuid4().hex
    keys = Keys()
    queue = make_queue(conn, keys.queue_name(model))
    conn.hset(f"rq:job:{job_id}", mapping={"status": "queued", "origin": queue.name, **fields})
    conn.rpush(queue.key, job_id)
    if ring:
        ring_bell(conn, model)
    return job_id


def ring_bell(conn: redis.Redis, model: str) -> None:
    """What an enqueue does to wake the model's idle workers (client/_rqstore.py's ENQUEUE_SCRIPT)."""
    bell = Keys().bell(model)
    conn.rpush(bell, "1")
    conn.expire(bell, 60)
    conn.publish(bell, "1")


def wait_ended(conn: redis.Redis, job_id: str, timeout: float = 10.0) -> str:
    """The job's error code, or its status if it has none, once it has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = read_outcome(conn, job_id)
        if outcome is not None:
            return outcome.code or outcome.status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never ended")
