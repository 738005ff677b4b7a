"""Job metrics the workers keep in Redis, so that any gateway serves the whole cluster's numbers.

One hash per model (`Keys.metrics`) holds every counter and histogram bucket as a field:

    jobs:finished | jobs:failed | jobs:canceled     jobs that ended so
    code:<code>                                     failed and canceled jobs by reason
    tokens:prompt | tokens:completion               tokens of finished generations
    <histogram>:<kind>:<upper bound>                observations that fell in that bucket
    <histogram>:<kind>:sum                          their sum, in seconds

Histograms are `ttft` (a worker starting a completion/chat job to its first piece) and
`duration` (a worker starting a job to its end), with `kind` the job kind. A bucket field
counts only the observations in its own bucket, so one observation is one HINCRBY; the
renderer makes them cumulative and their total is the histogram's count.

The increments ride in the pipeline that already ends the job: no extra round trip, and
nothing per token. Jobs ended by someone else (the janitor canceling a queued job, a
dead worker's jobs failed) are counted by whoever ended them, in one small pipeline.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import redis
from hostler.schemas import Keys

Outcome = Literal["finished", "failed", "canceled"]
OUTCOMES: tuple[Outcome, ...] = ("finished", "failed", "canceled")
HISTOGRAMS = ("ttft", "duration")

# Seconds. A first piece takes tens of milliseconds on a small model and seconds behind a long
# prompt; a whole job runs from a millisecond (a token count) to minutes.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BUCKETS = {"ttft": TTFT_BUCKETS, "duration": DURATION_BUCKETS}
# A finished generation that stopped because nobody listened any more.
STOPPED_CODE = "stopped"


def bound_label(bound: float) -> str:
    """A bucket's upper bound as written in field names and Prometheus `le` labels."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def bucket_of(histogram: str, seconds: float) -> str:
    for bound in BUCKETS[histogram]:
        if seconds <= bound:
            return bound_label(bound)
    return "+Inf"


class JobMetrics:
    """Queues one model's metric increments on a pipeline that is about to run anyway."""

    def __init__(self, keys: Keys, model: str) -> None:
        self.key = keys.metrics(model)
        self.models_key = keys.metric_models
        self.model = model
        # Whether this process has added the model to the set; a job end that did not apply
        # (the job was no longer the worker's) sets it back.
        self.announced = False

    def observe(self, pipe: Any, histogram: str, kind: str, seconds: float) -> None:
        seconds = max(0.0, seconds)
        pipe.hincrby(self.key, f"{histogram}:{kind}:{bucket_of(histogram, seconds)}", 1)
        pipe.hincrbyfloat(self.key, f"{histogram}:{kind}:sum", seconds)

    def ended(
        self,
        pipe: Any,
        outcome: Outcome,
        *,
        kind: str,
        code: str | None = None,
        ran_s: float | None = None,
        first_piece_s: float | None = None,
        usage: dict[str, Any] | None = None,
    ) -> None:
        """One job's end: its outcome, its reason, its tokens and timings."""
        if not self.announced:
            # Once per process: the set only tells a gateway which hashes to read.
            pipe.sadd(self.models_key, self.model)
            self.announced = True
        pipe.hincrby(self.key, f"jobs:{outcome}", 1)
        if code is not None:
            pipe.hincrby(self.key, f"code:{code}", 1)
        if usage is not None:
            pipe.hincrby(self.key, "tokens:prompt", int(usage.get("prompt_tokens", 0)))
            pipe.hincrby(self.key, "tokens:completion", int(usage.get("completion_tokens", 0)))
        if first_piece_s is not None:
            self.observe(pipe, "ttft", kind, first_piece_s)
        if ran_s is not None:
            self.observe(pipe, "duration", kind, ran_s)

    def finished(self, pipe: Any, result: dict[str, Any], kind: str, clock: PieceClock) -> None:
        """A job that returned a result; a generation stopped for lack of listeners counts as canceled."""
        stopped = result.get("finish_reason") == "canceled"
        usage = result.get("usage")
        self.ended(
            pipe,
            "canceled" if stopped else "finished",
            kind=kind,
            code=STOPPED_CODE if stopped else None,
            ran_s=clock.ran_s(),
            first_piece_s=clock.first_piece_s(),
            usage=usage if isinstance(usage, dict) else None,
        )


def count_ended(connection: redis.Redis, keys: Keys, model: str, outcome: Outcome, code: str, count: int = 1) -> None:
    """Counts jobs that were ended outside a worker (janitor, controller, host agent)."""
    if count <= 0:
        return
    key = keys.metrics(model)
    try:
        with connection.pipeline(transaction=False) as pipe:
            pipe.sadd(keys.metric_models, model)
            pipe.hincrby(key, f"jobs:{outcome}", count)
            pipe.hincrby(key, f"code:{code}", count)
            pipe.execute()
    except redis.RedisError:
        pass  # a lost increment must not undo the job's end, which already happened


class PieceClock:
    """When a job started on this worker, and when its first piece came."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.first_piece: float | None = None

    def piece(self) -> None:
        if self.first_piece is None:
            self.first_piece = time.monotonic()

    def ran_s(self) -> float:
        return time.monotonic() - self.started

    def first_piece_s(self) -> float | None:
        return None if self.first_piece is None else self.first_piece - self.started
