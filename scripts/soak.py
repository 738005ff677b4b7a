#!/usr/bin/env python3
"""Soak: streaming clients and a queue of batch jobs on the tiny GGUF, then an audit of every job and key.

The load: N streaming client threads (one Client each) that stream a short completion
after another until the duration ends, and a feeder that submits M batch jobs at once
(backing off when the queue bound refuses one). Then it waits until every job has ended
and checks, from rq's own records:

* every job ended exactly once, as finished, failed or canceled; lost = never ended, or
  its record vanished long before its TTL;
* every finished job's stored text equals what its client received (the streamed pieces
  joined, or JobHandle.result());
* no Redis key is left without a TTL, except a short list of structural keys, each
  justified in ALLOWED_WITHOUT_TTL; sets of live things name only live things, and rq's
  registries hold no entry past its expiry.

It prints jobs finished/failed/canceled/lost, stream and batch p50/p99 latency,
throughput and whatever the audit found. Without --redis it starts its own embedded
Redis and `hostler up` with a tiny GGUF named "tiny", and after stopping `hostler up`
audits the keys once more (what a clean shutdown leaves behind).

Usage::

    python scripts/soak.py --duration 60 --streams 50 --batch 500
    python scripts/soak.py --redis redis://127.0.0.1:6379/0 --model tiny --duration 600
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from hostler import Client, HostlerError, JobFailed, JobHandle, QueueFull
from hostler.client._connection import PREFIX_ENV, mask_url
from hostler.client._rqstore import read_outcome
from hostler.schemas import DEFAULT_PREFIX, PRIORITIES, CompletionResult, Keys, as_text
from hostler.worker.embedded_redis import EmbeddedRedis
from rq.job import Job as RqJob
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import utcparse
from rq.worker import Worker as RqWorker

__all__ = ["SoakReport", "leftover_keys", "main", "run_soak", "started_stack"]

MODEL = "tiny"
HOST_ID = "soak"
MAX_TOKENS = 8
TEMPERATURE = 0.7
# A stream call's own wait; far above a tiny-model job, so only a stuck job reaches it.
CALL_TIMEOUT_S = 120.0
# After the load: how long every job may take to end before the rest count as lost.
SETTLE_TIMEOUT_S = 300.0
STACK_START_S = 60.0
STACK_STOP_S = 30.0
# Pipelined reads per round trip in the audit (a 60 s soak ends with thousands of jobs).
CHUNK = 500

PROMPTS = (
    "Once upon a time, in a small village by the sea,",
    "The three most important ideas in the history of science are",
    "Q: Why is the sky blue?\nA:",
    "A message queue is useful in a web application because",
    "List five tips for writing clear documentation:\n1.",
)

ENDED = ("finished", "failed", "canceled")


def _prompt(kind: str, index: int, call: int) -> str:
    # Unique per job, and sampled with its own seed: a result delivered to the wrong client
    # then shows as a text mismatch instead of passing as an identical text.
    return f"{PROMPTS[(index + call) % len(PROMPTS)]} ({kind} {index}.{call})"


# -- the load -----------------------------------------------------------------------


@dataclass
class _StreamCall:
    job_id: str
    text: str
    latency_s: float
    first_piece_s: float | None
    error: str | None = None


@dataclass
class _Load:
    """What the client threads saw; lists and counters are only appended to under `lock`."""

    calls: list[_StreamCall] = field(default_factory=list)
    handles: list[JobHandle] = field(default_factory=list)
    calls_per_stream: list[int] = field(default_factory=list)
    client_errors: Counter[str] = field(default_factory=Counter)
    queue_full: int = 0
    not_submitted: int = 0
    started_wall: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, what: str) -> None:
        with self.lock:
            self.client_errors[what] += 1

    def refused(self) -> None:
        """A call that waited for room on the full queue (wait_when_full) until its bound."""
        with self.lock:
            self.queue_full += 1


@dataclass(frozen=True)
class _Settings:
    url: str
    prefix: str | None
    model: str
    max_tokens: int
    call_timeout: float


def _stream_one(client: Client, settings: _Settings, prompt: str, seed: int, until: float) -> _StreamCall:
    """One streamed completion, waiting out a full queue until `until` (or its call timeout);
    raises QueueFull when the queue is still full then (nothing was enqueued)."""
    job_id: str | None = None
    pieces: list[str] = []
    first: float | None = None
    error: str | None = None
    started = time.monotonic()
    try:
        stream = client.stream(
            settings.model,
            prompt,
            max_tokens=settings.max_tokens,
            temperature=TEMPERATURE,
            seed=seed,
            timeout=settings.call_timeout,
            wait_when_full=max(0.0, until - time.monotonic()),
        )
        # The audit compares what the client received with what rq stored under this id.
        job_id = stream.job_id
        for piece in stream:
            if first is None:
                first = time.monotonic() - started
            pieces.append(piece)
    except QueueFull:
        raise
    except JobFailed as exc:
        error = f"JobFailed({exc.code})"
    except HostlerError as exc:
        error = type(exc).__name__
    if job_id is None:
        # Raised before anything was enqueued (no job id): nothing to audit, only to report.
        raise RuntimeError(error or "stream() started no job")
    return _StreamCall(job_id, "".join(pieces), time.monotonic() - started, first, error)


def _stream_loop(settings: _Settings, index: int, deadline: float, load: _Load) -> None:
    calls = 0
    rng = random.Random(index)
    client = Client(settings.url, prefix=settings.prefix, timeout=settings.call_timeout)
    try:
        while time.monotonic() < deadline:
            try:
                call = _stream_one(client, settings, _prompt("stream", index, calls), rng.randrange(2**32), deadline)
            except QueueFull:
                load.refused()
                continue
            calls += 1
            with load.lock:
                load.calls.append(call)
            if call.error is not None:
                load.error(f"stream: {call.error}")
    except Exception as exc:  # noqa: BLE001 - a thread must report, not die silently
        load.error(f"stream thread: {type(exc).__name__}: {exc}")
    finally:
        client.close()
        with load.lock:
            load.calls_per_stream.append(calls)


def _feed(client: Client, settings: _Settings, count: int, deadline: float, load: _Load) -> None:
    rng = random.Random(-1)
    submitted = 0
    try:
        while submitted < count and time.monotonic() < deadline:
            try:
                handle = client.submit(
                    settings.model,
                    _prompt("batch", 0, submitted),
                    max_tokens=settings.max_tokens,
                    temperature=TEMPERATURE,
                    seed=rng.randrange(2**32),
                    priority="batch",
                    wait_when_full=max(0.0, deadline - time.monotonic()),
                )
            except QueueFull:
                load.refused()
                continue
            submitted += 1
            with load.lock:
                load.handles.append(handle)
    except Exception as exc:  # noqa: BLE001 - a thread must report, not die silently
        load.error(f"feeder: {type(exc).__name__}: {exc}")
    finally:
        load.not_submitted = count - submitted


def _run_load(
    feeder: Client, settings: _Settings, duration: float, streams: int, batch: int, settle_timeout: float
) -> _Load:
    load = _Load(started_wall=time.time())
    deadline = time.monotonic() + duration
    threads = [
        threading.Thread(target=_stream_loop, args=(settings, i, deadline, load), name=f"soak-stream-{i}", daemon=True)
        for i in range(streams)
    ]
    # The feeder may keep retrying a full queue past the duration, but not past the settle time.
    feeder_deadline = deadline + settle_timeout
    feed_args = (feeder, settings, batch, feeder_deadline, load)
    threads.append(threading.Thread(target=_feed, args=feed_args, name="soak-feeder", daemon=True))
    for thread in threads:
        thread.start()
    join_by = feeder_deadline + settings.call_timeout + 10
    for thread in threads:
        thread.join(max(0.0, join_by - time.monotonic()))
        if thread.is_alive():
            load.error(f"{thread.name} still running at the join deadline")
    return load


# -- the audit ----------------------------------------------------------------------


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


def _wait_ended(connection: redis.Redis, ids: Sequence[str], timeout: float) -> dict[str, str]:
    """Polls until every job has ended or its record is gone, or until timeout; returns the statuses."""
    deadline = time.monotonic() + timeout
    statuses = _statuses(connection, ids)
    while True:
        pending = [i for i, s in statuses.items() if s not in (*ENDED, "missing")]
        if not pending or time.monotonic() > deadline:
            return statuses
        time.sleep(0.2)
        statuses.update(_statuses(connection, pending))


def _end_registries(connection: redis.Redis, keys: Keys, model: str) -> list[str]:
    """The keys of rq's finished, failed and canceled registries of both priority classes."""
    names = [keys.queue_name(model, p) for p in PRIORITIES]
    classes = (FinishedJobRegistry, FailedJobRegistry, CanceledJobRegistry)
    return [cls(name, connection=connection, serializer=JSONSerializer).key for name in names for cls in classes]


def _exactly_once(connection: redis.Redis, registries: list[str], statuses: dict[str, str]) -> list[str]:
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


def _latencies(connection: redis.Redis, ids: Sequence[str]) -> list[float]:
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


def _stream_mismatches(connection: redis.Redis, calls: list[_StreamCall], statuses: dict[str, str]) -> list[str]:
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


def _batch_mismatches(
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


def _end_codes(connection: redis.Redis, statuses: dict[str, str]) -> Counter[str]:
    """Why the jobs that did not finish ended, as 'status:code'."""
    codes: Counter[str] = Counter()
    for job_id, status in statuses.items():
        if status in ("failed", "canceled"):
            outcome = read_outcome(connection, job_id)
            codes[f"{status}:{outcome.code if outcome is not None else '?'}"] += 1
    return codes


# -- keys ---------------------------------------------------------------------------

# Keys that may exist without a TTL. Everything else hostler or rq writes must expire or be
# deleted once the jobs have ended. (pattern, only while a stack runs, why it may stay)
_RQ_WORKER = re.escape(RqWorker.redis_worker_namespace_prefix)


def _allowed_without_ttl(keys: Keys) -> list[tuple[str, bool, str]]:
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


# -- the report ---------------------------------------------------------------------


def _percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


@dataclass
class SoakReport:
    url: str
    model: str
    duration_s: float
    streams: int
    batch: int
    # From the first enqueue until every job had ended (or the settle timeout).
    load_s: float
    stream_jobs: int
    batch_jobs: int
    finished: int
    failed: int
    canceled: int
    lost: int
    end_codes: dict[str, int]
    lost_jobs: list[str]
    stream_latency_s: list[float]
    stream_first_piece_s: list[float]
    batch_latency_s: list[float]
    mismatches: list[str]
    exactly_once_violations: list[str]
    leftover_keys: list[str]
    client_errors: dict[str, int]
    queue_full: int
    not_submitted: int
    calls_per_stream: list[int]
    # Filled by main() when it started the stack itself: keys left after `hostler up` exited.
    after_shutdown: list[str] | None = None

    @property
    def total(self) -> int:
        return self.stream_jobs + self.batch_jobs

    @property
    def ok(self) -> bool:
        return (
            self.finished == self.total
            and not self.mismatches
            and not self.exactly_once_violations
            and not self.leftover_keys
            and not self.client_errors
            and not self.not_submitted
            and not self.after_shutdown
        )

    def summary(self) -> str:
        def listing(title: str, items: Sequence[str], limit: int = 10) -> list[str]:
            lines = [f"{title}: {len(items)}"]
            lines += [f"  {item}" for item in items[:limit]]
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")
            return lines

        per_stream = sorted(self.calls_per_stream) or [0]
        rate = self.finished / self.load_s if self.load_s > 0 else 0.0
        lines = [
            f"soak on {self.model} at {mask_url(self.url)}: {self.duration_s:g} s, {self.streams} streaming clients, "
            f"{self.batch} batch jobs",
            f"jobs: {self.total} ({self.stream_jobs} streamed, {self.batch_jobs} batch): finished {self.finished}, "
            f"failed {self.failed}, canceled {self.canceled}, lost {self.lost}",
            f"stream latency: p50 {_ms(_percentile(self.stream_latency_s, 50))}, "
            f"p99 {_ms(_percentile(self.stream_latency_s, 99))} "
            f"(first piece p50 {_ms(_percentile(self.stream_first_piece_s, 50))}, "
            f"p99 {_ms(_percentile(self.stream_first_piece_s, 99))}); "
            f"jobs per stream {per_stream[0]}..{per_stream[-1]}",
            f"batch latency (enqueue to end): p50 {_ms(_percentile(self.batch_latency_s, 50))}, "
            f"p99 {_ms(_percentile(self.batch_latency_s, 99))}",
            f"throughput: {rate:.1f} jobs/s ({self.finished} finished in {self.load_s:.1f} s, first enqueue to "
            f"last end)",
            f"calls refused by the full queue after waiting: {self.queue_full}; "
            f"batch jobs not submitted: {self.not_submitted}",
        ]
        if self.end_codes:
            lines.append("ended without a result: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.end_codes.items())))
        if self.client_errors:
            lines.append("client errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.client_errors.items())))
        if self.lost_jobs:
            lines += listing("lost jobs", self.lost_jobs)
        lines += listing("text mismatches", self.mismatches)
        lines += listing("ended other than exactly once", self.exactly_once_violations)
        lines += listing("leftover keys", self.leftover_keys)
        if self.after_shutdown is not None:
            lines += listing("leftover keys after hostler up exited", self.after_shutdown)
        lines.append("result: " + ("OK" if self.ok else "PROBLEMS"))
        return "\n".join(lines)


def run_soak(
    url: str,
    duration: float,
    streams: int,
    batch: int,
    *,
    model: str = MODEL,
    max_tokens: int = MAX_TOKENS,
    prefix: str | None = None,
    call_timeout: float = CALL_TIMEOUT_S,
    settle_timeout: float = SETTLE_TIMEOUT_S,
) -> SoakReport:
    """Runs the load against the stack at url, waits for every job to end, and audits jobs and keys."""
    settings = _Settings(url, prefix, model, max_tokens, call_timeout)
    # The feeder's client: its handles use its connection until the audit has read their results.
    with Client(url, prefix=prefix, timeout=call_timeout) as client:
        # The first job waits for placement and the model load; latencies measure serving.
        client.complete(model, "warm up", max_tokens=1)
        load = _run_load(client, settings, duration, streams, batch, settle_timeout)
        connection, keys = client.connection, client.keys
        with load.lock:
            # A copy: a stream thread that outlived its join deadline may still append.
            calls, handles = list(load.calls), list(load.handles)
        ids = [c.job_id for c in calls] + [h.id for h in handles]
        statuses = _wait_ended(connection, ids, settle_timeout)
        load_s = time.time() - load.started_wall
        counts = Counter(s if s in ENDED else "lost" for s in statuses.values())
        batch_ids = [h.id for h in handles if statuses[h.id] in ENDED]
        report = SoakReport(
            url=url,
            model=model,
            duration_s=duration,
            streams=streams,
            batch=batch,
            load_s=load_s,
            stream_jobs=len(calls),
            batch_jobs=len(handles),
            finished=counts["finished"],
            failed=counts["failed"],
            canceled=counts["canceled"],
            lost=counts["lost"],
            end_codes=dict(_end_codes(connection, statuses)),
            lost_jobs=[f"{i} ({s})" for i, s in statuses.items() if s not in ENDED],
            stream_latency_s=[c.latency_s for c in calls if c.error is None],
            stream_first_piece_s=[c.first_piece_s for c in calls if c.first_piece_s is not None],
            batch_latency_s=_latencies(connection, batch_ids),
            mismatches=_stream_mismatches(connection, calls, statuses)
            + _batch_mismatches(connection, handles, statuses, call_timeout),
            exactly_once_violations=_exactly_once(connection, _end_registries(connection, keys, model), statuses),
            leftover_keys=leftover_keys(connection, keys, live=True),
            client_errors=dict(load.client_errors),
            queue_full=load.queue_full,
            not_submitted=load.not_submitted,
            calls_per_stream=load.calls_per_stream,
        )
        return report


# -- a stack of its own -------------------------------------------------------------


def _keys(prefix: str | None) -> Keys:
    # As Client and `hostler up` choose it, so that this script reads the keys they write.
    return Keys(prefix or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX)


@dataclass
class _UpProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STACK_STOP_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def _start_up(url: str, models_dir: Path, log: Path) -> _UpProcess:
    command = [sys.executable, "-m", "hostler.worker", "up", "--models", str(models_dir)]
    command += ["--no-demo", "--host-id", HOST_ID]
    with log.open("wb") as handle:
        # Own session: a Ctrl-C reaches this script, which then stops it with SIGTERM.
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            # The URL (maybe with a password) by environment: `ps` shows every user a command line.
            env=dict(os.environ, PYTHONUNBUFFERED="1", HOSTLER_REDIS_URL=url),
            start_new_session=True,
        )
    up = _UpProcess(process, log)
    connection = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + STACK_START_S
        while not connection.exists(_keys(None).host(HOST_ID)):
            if process.poll() is not None or time.monotonic() > deadline:
                up.stop()
                raise RuntimeError(f"hostler up did not announce itself:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
    finally:
        connection.close()
    return up


@contextlib.contextmanager
def started_stack(model: str = MODEL) -> Iterator[tuple[str, Callable[[], None]]]:
    """An embedded Redis and `hostler up` serving a tiny GGUF named model.

    Yields the Redis URL and a function that stops `hostler up` early (Redis stays up, so
    what the shutdown left behind can be read).
    """
    from make_tiny_gguf import write_tiny_gguf

    with tempfile.TemporaryDirectory(prefix="hostler-soak-") as tmp, EmbeddedRedis() as server:
        models_dir = Path(tmp) / "models"
        models_dir.mkdir()
        write_tiny_gguf(models_dir / f"{model}.gguf")
        up = _start_up(server.url, models_dir, Path(tmp) / "up.log")
        try:
            yield server.url, up.stop
        finally:
            up.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds the streaming clients run")
    parser.add_argument("--streams", type=int, default=50, help="concurrent streaming clients")
    parser.add_argument("--batch", type=int, default=500, help="batch jobs submitted at the start")
    parser.add_argument("--redis", help="use the stack at this URL (default: start an embedded one)")
    parser.add_argument("--model", default=MODEL, help="model id (with --redis)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument("--settle-timeout", type=float, default=SETTLE_TIMEOUT_S, help="seconds jobs may take to end")
    args = parser.parse_args(argv)

    def soak(url: str) -> SoakReport:
        return run_soak(
            url,
            args.duration,
            args.streams,
            args.batch,
            model=args.model,
            max_tokens=args.max_tokens,
            settle_timeout=args.settle_timeout,
        )

    if args.redis:
        report = soak(args.redis)
    else:
        with started_stack(args.model) as (url, stop_up):
            report = soak(url)
            stop_up()
            connection = redis.Redis.from_url(url)
            try:
                report.after_shutdown = leftover_keys(connection, _keys(None), live=False)
            finally:
                connection.close()
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
