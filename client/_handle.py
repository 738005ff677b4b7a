"""A handle on one submitted job: its status, its result, canceling it while it waits."""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis
from hostler.schemas import PRIORITIES, ErrorCode, JobResult, Keys

from . import _reads as reads
from ._errors import Timeout, job_error
from ._events import PubSubPool, Subscription, wait_outcome
from ._outcome import queue_key
from ._pieces import Stream, stream_pieces
from ._rqstore import cancel_queued


class JobHandle:
    """A job on a model's queue, found again by its id from any process."""

    def __init__(self, connection: redis.Redis, keys: Keys, job_id: str, model: str) -> None:
        self.connection = connection
        self.keys = keys
        self.id = job_id
        self.model = model

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r}, model={self.model!r})"

    def status(self) -> str:
        """queued, started, finished, failed or canceled ('missing' once its record expired)."""
        return reads.run_sync(self.connection, reads.job_status(self.id))

    def result(self, timeout: float = 600.0) -> JobResult:
        """Waits for the job's end; returns its result or raises JobFailed (or Timeout)."""
        try:
            outcome = wait_outcome(self.connection, self.id, time.monotonic() + timeout)
        except Timeout:
            raise Timeout(f"job {self.id} did not finish within {timeout:.0f} s; it is {self.status()}") from None
        if outcome.result is not None:
            return outcome.result
        raise job_error(self.id, outcome.code or ErrorCode.INTERNAL, outcome.message or outcome.status)

    def stream(self, timeout: float = 600.0) -> Iterator[str]:
        """The job's text as it is made (for a job submitted with stream=True; otherwise the
        whole text once it ends). Pieces published before this call are sent in one piece."""
        subscription = Subscription(PubSubPool(self.connection), self.keys.channel(self.id))
        pieces = stream_pieces(self.connection, subscription, self.id, time.monotonic() + timeout, None)
        return Stream(pieces, subscription, None)

    def cancel(self) -> bool:
        """Cancels the job if it is still waiting; False if a worker has already taken it."""
        return any(
            cancel_queued(
                self.connection,
                self.keys,
                self.id,
                queue_key(self.keys.queue_name(self.model, priority)),
                ErrorCode.CANCELED,
                "canceled by a client",
            )
            for priority in PRIORITIES
        )
