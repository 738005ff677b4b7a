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

The load is scripts/soak_load.py's, the audit scripts/soak_audit.py's, the printed report
scripts/soak_report.py's; this file runs them in turn (run_soak, which tests/e2e/test_load.py
also calls) and, without --redis, starts the stack the way the tests do (scripts/up_stack.py).

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
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import redis
from hostler import Client
from hostler.client._connection import PREFIX_ENV
from hostler.schemas import DEFAULT_PREFIX, Keys
from hostler.worker.embedded_redis import EmbeddedRedis
from soak_audit import (
    ENDED,
    batch_mismatches,
    end_codes,
    end_registries,
    exactly_once,
    latencies,
    leftover_keys,
    stream_mismatches,
    wait_ended,
)
from soak_load import Settings, run_load
from soak_report import SoakReport
from up_stack import start_stack, stop_stack

__all__ = ["SoakReport", "leftover_keys", "main", "run_soak", "started_stack"]

MODEL = "tiny"
HOST_ID = "soak"
MAX_TOKENS = 8
# A stream call's own wait; far above a tiny-model job, so only a stuck job reaches it.
CALL_TIMEOUT_S = 120.0
# After the load: how long every job may take to end before the rest count as lost.
SETTLE_TIMEOUT_S = 300.0
STACK_START_S = 60.0


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
    settings = Settings(url, prefix, model, max_tokens, call_timeout)
    # The feeder's client: its handles use its connection until the audit has read their results.
    with Client(url, prefix=prefix, timeout=call_timeout) as client:
        # The first job waits for placement and the model load; latencies measure serving.
        client.complete(model, "warm up", max_tokens=1)
        load = run_load(client, settings, duration, streams, batch, settle_timeout)
        connection, keys = client.connection, client.keys
        with load.lock:
            # A copy: a stream thread that outlived its join deadline may still append.
            calls, handles = list(load.calls), list(load.handles)
        ids = [c.job_id for c in calls] + [h.id for h in handles]
        statuses = wait_ended(connection, ids, settle_timeout)
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
            end_codes=dict(end_codes(connection, statuses)),
            lost_jobs=[f"{i} ({s})" for i, s in statuses.items() if s not in ENDED],
            stream_latency_s=[c.latency_s for c in calls if c.error is None],
            stream_first_piece_s=[c.first_piece_s for c in calls if c.first_piece_s is not None],
            batch_latency_s=latencies(connection, batch_ids),
            mismatches=stream_mismatches(connection, calls, statuses)
            + batch_mismatches(connection, handles, statuses, call_timeout),
            exactly_once_violations=exactly_once(connection, end_registries(connection, keys, model), statuses),
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
        # The tests' own start (scripts/up_stack.py); quiet, since a long soak would log every job.
        stack = start_stack(
            server.url, models_dir, Path(tmp) / "up.log", host_id=HOST_ID, verbose=False, start_timeout=STACK_START_S
        )
        try:
            yield server.url, lambda: stop_stack(stack)
        finally:
            stop_stack(stack)


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
