"""The soak's audit, from rq's own records once the load has ended.

* every job ended exactly once, as finished, failed or canceled; lost = never ended, or its
  record vanished long before its TTL;
* every finished job's stored text equals what its client received (the streamed pieces
  joined, or JobHandle.result());
* no Redis key is left without a TTL, except a short list of structural keys, each justified
  in ALLOWED_WITHOUT_TTL; sets of live things name only live things, and rq's registries hold
  no entry past its expiry.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import redis
from hostler import HostlerError, JobHandle
from hostler.client._rqstore import read_outcome
from hostler.schemas import PRIORITIES, CompletionResult, Keys, as_text
from rq.job import Job as RqJob
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import utcparse
from rq.worker import Worker as RqWorker
from soak_load import StreamCall

__all__ = [
    "ALLOWED_WITHOUT_TTL",
    "ENDED",
    "batch_mismatches",
    "end_codes",
    "end_registries",
    "exactly_once",
    "latencies",
    "leftover_keys",
    "stream_mismatches",
    "wait_ended",
]

ENDED = ("finished", "failed", "canceled")
# Pipelined reads per round trip (a 60 s soak ends with thousands of jobs).
CHUNK = 500


# -- jobs ---------------------------------------------------------------------------


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _statuses(connection: redis.Redis, ids: Sequence[str]) -> dict[str, str]:
    """rq status of each job ('missing' when its record is gone)."""
    out: dict[str, str] = {}
    for chunk in _chunks(ids):
        with connection.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.hget(RqJob.key_for(job_id), "status")
            for job_id, raw in zip(chunk, pipe.execute(), strict=True):
                out[job_id] = raw.decode() if raw is not None else "missing"
    return out


def wait_ended(connection: redis.Redis, ids: Sequence[str], timeout: float) -> dict[str, str]:
    """Polls until every job has ended or its record is gone, or until timeout; returns the statuses."""
    deadline = time.monotonic() + timeout
    statuses = _statuses(connection, ids)
    while True:
        pending = [i for i, s in statuses.items() if s not in (*ENDED, "missing")]
        if not pending or time.monotonic() > deadline:
            return statuses
        time.sleep(0.2)
        statuses.update(_statuses(connection, pending))


def end_registries(connection: redis.Redis, keys: Keys, model: str) -> list[str]:
    """The keys of rq's finished, failed and canceled registries of both priority classes."""
    names = [keys.queue_name(model, p) for p in PRIORITIES]
    classes = (FinishedJobRegistry, FailedJobRegistry, CanceledJobRegistry)
    return [cls(name, connection=connection, serializer=JSONSerializer).key for name in names for cls in classes]


def exactly_once(connection: redis.Redis, registries: list[str], statuses: dict[str, str]) -> list[str]:
    """Ended jobs in more than one end registry, in none, or with more than one stored result."""
    problems: list[str] = []
    ended = [i for i, s in statuses.items() if s in ENDED]
    for chunk in _chunks(ended):
        with connection.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                for registry in registries:
                    pipe.zscore(registry, job_id)
                pipe.xlen(f"rq:results:{job_id}")  # rq's Result.get_key, which is untyped
            replies = pipe.execute()
        width = len(registries) + 1
        for n, job_id in enumerate(chunk):
            row = replies[n * width : (n + 1) * width]
            found = [r for r, score in zip(registries, row[:-1], strict=True) if score is not None]
            if len(found) != 1:
                problems.append(f"{job_id} ({statuses[job_id]}) is in {len(found)} end registries: {found}")
            if row[-1] != 1:
                problems.append(f"{job_id} ({statuses[job_id]}) has {row[-1]} stored results")
    return problems


def latencies(connection: redis.Redis, ids: Sequence[str]) -> list[float]:
    """Enqueue to end of each ended job, from the timestamps rq keeps in its record."""
    out: list[float] = []
    for chunk in _chunks(ids):
        with connection.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.hmget(RqJob.key_for(job_id), ["enqueued_at", "ended_at"])
            for enqueued, ended in pipe.execute():
                if enqueued and ended:
                    out.append((utcparse(ended.decode()) - utcparse(enqueued.decode())).total_seconds())
    return out


def _stored_text(connection: redis.Redis, job_id: str) -> str | None:
    outcome = read_outcome(connection, job_id)
    result = outcome.result if outcome is not None else None
    return result.text if isinstance(result, CompletionResult) else None


def stream_mismatches(connection: redis.Redis, calls: list[StreamCall], statuses: dict[str, str]) -> list[str]:
    problems = []
    for call in calls:
        status = statuses[call.job_id]
        if call.error is None and status != "finished":
            problems.append(f"stream {call.job_id}: the client got a whole text but the job is {status}")
        elif call.error is not None and status == "finished":
            problems.append(f"stream {call.job_id}: the job finished but the client got {call.error}")
        elif status == "finished" and (stored := _stored_text(connection, call.job_id)) != call.text:
            problems.append(f"stream {call.job_id}: received {call.text!r}, stored {stored!r}")
    return problems


def batch_mismatches(
    connection: redis.Redis, handles: list[JobHandle], statuses: dict[str, str], timeout: float
) -> list[str]:
    problems = []
    for handle in handles:
        if statuses[handle.id] != "finished":
            continue
        try:
            result = handle.result(timeout=timeout)
        except HostlerError as exc:
            problems.append(f"batch {handle.id}: finished, but result() raised {exc}")
            continue
        stored = _stored_text(connection, handle.id)
        if not isinstance(result, CompletionResult) or result.text != stored:
            problems.append(f"batch {handle.id}: result() gave {result!r}, stored {stored!r}")
    return problems


def end_codes(connection: redis.Redis, statuses: dict[str, str]) -> Counter[str]:
    """Why the jobs that did not finish ended, as 'status:code'."""
    codes: Counter[str] = Counter()
    for job_id, status in statuses.items():
        if status in ("failed", "canceled"):
            outcome = read_outcome(connection, job_id)
            codes[f"{status}:{outcome.code if outcome is not None else '?'}"] += 1
    return codes


# -- keys ---------------------------------------------------------------------------


def _allowed_without_ttl(keys: Keys) -> list[tuple[str, bool, str]]:
    """Keys that may exist without a TTL: (pattern, only while a stack runs, why it may stay).

    Everything else hostler or rq writes must expire or be deleted once the jobs have ended.
    """
    p = re.escape(keys.prefix)
    return [
        (r"rq:queues", False, "rq's set of queue keys: one member per queue name ever used, read by `rq info`"),
        (
            r"rq:(finished|failed|canceled):.+",
            False,
            "rq's end registries: each member's score is its own expiry (checked below); the set lives on",
        ),
        (r"rq:workers", True, "rq's set of registered workers; each member must have a live rq:worker:<name> hash"),
        (r"rq:workers:.+", True, "rq's per-queue worker sets; same check as rq:workers"),
        (p + r"hosts", True, "hosts that announced themselves; each member must have a live report"),
        (p + r"workers", True, "hostler workers; each member must have a live report"),
        (p + r"assign:.+", True, "the controller's desired workers of a live host"),
        (p + r"max-queue", False, "the operator's queue bound (hostler up --max-queue): configuration"),
        (p + r"spec:.+", False, "a client.load spec (replicas, keep_alive): desired state until unload"),
        (p + r"load-params:.+", False, "the last load's params, kept so a restarted worker loads the same"),
        (p + r"metrics:.+", False, "a model's job counters and histograms: Prometheus counters never expire"),
        (p + r"metrics-models", False, "the models that have a metrics hash, for /metrics to read"),
    ]


ALLOWED_WITHOUT_TTL = _allowed_without_ttl(Keys())


def _dangling_members(connection: redis.Redis, keys: Keys, key: str) -> list[str]:
    """Members of a set of live things (or of a host's assignments) whose own key is gone."""
    if key == keys.hosts:
        members = [as_text(m) for m in connection.smembers(key)]
        return [f"{key} names host {m!r}, which has no report" for m in members if not connection.exists(keys.host(m))]
    if key == keys.workers:
        members = [as_text(m) for m in connection.smembers(key)]
        return [f"{key} names {m!r}, which has no report" for m in members if not connection.exists(keys.worker(m))]
    if key.startswith(keys.prefix + "assign:"):
        host = key.removeprefix(keys.prefix + "assign:")
        return [] if connection.exists(keys.host(host)) else [f"{key}: assignments of host {host!r}, which is gone"]
    if key == RqWorker.redis_workers_keys or key.startswith(RqWorker.redis_workers_keys + ":"):
        members = [as_text(m) for m in connection.smembers(key)]
        return [f"{key} names {m!r}, which has no rq worker hash" for m in members if not connection.exists(m)]
    return []


def _expired_entries(connection: redis.Redis, key: str) -> list[str]:
    """Registry members past their expiry: rq keeps them until someone runs the registry's cleanup."""
    stale = int(connection.zcount(key, 0, time.time() - 1))
    return [f"{key}: {stale} entries past their expiry"] if stale else []


def leftover_keys(connection: redis.Redis, keys: Keys, *, live: bool = True) -> list[str]:
    """Keys left behind: no TTL and not allowed, dangling members, expired registry entries.

    live: a stack is still running, so its hosts, workers and assignments may stay; after a
    clean shutdown none of them should.
    """
    rules = [(re.compile(pattern), only_live) for pattern, only_live, _ in _allowed_without_ttl(keys)]
    names = sorted(as_text(k) for k in connection.scan_iter(count=1000))
    problems: list[str] = []
    for chunk in _chunks(names):
        with connection.pipeline(transaction=False) as pipe:
            for name in chunk:
                pipe.ttl(name)
                pipe.type(name)
            replies = pipe.execute()
        for n, name in enumerate(chunk):
            ttl, kind = int(replies[2 * n]), as_text(replies[2 * n + 1])
            if ttl != -1:
                continue  # expires (> 0) or already gone (-2)
            allowed = [only_live for rule, only_live in rules if rule.fullmatch(name)]
            if not allowed or (allowed[0] and not live):
                problems.append(f"{name} ({kind}, no TTL)")
                continue
            problems += _dangling_members(connection, keys, name)
            if kind == "zset" and re.fullmatch(r"rq:(finished|failed|canceled):.+", name):
                problems += _expired_entries(connection, name)
    return problems
