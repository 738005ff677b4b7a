"""A handle on one submitted job: its status, its result, canceling it while it waits."""

from __future__ import annotations

import time

import redis
from hostler.schemas import PRIORITIES, ErrorCode, JobResult, Keys

from ._errors import ContextExceeded, JobFailed, NoCapacity, Timeout
from ._events import wait_outcome
from ._rqstore import cancel_queued, fetch_job, queue_key


def job_error(job_id: str, code: str, message: str) -> JobFailed:
    if code == ErrorCode.CONTEXT_EXCEEDED:
        return ContextExceeded(job_id, code, message)
    if code == ErrorCode.NO_CAPACITY:
        return NoCapacity(job_id, code, message)
    return JobFailed(job_id, code, message)


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
        job = fetch_job(self.connection, self.id)
        status = job.get_status(refresh=False) if job is not None else None
        return status.value if status is not None else "missing"

    def result(self, timeout: float = 600.0) -> JobResult:
        """Waits for the job's end; returns its result or raises JobFailed (or Timeout)."""
        try:
            outcome = wait_outcome(self.connection, self.id, time.monotonic() + timeout)
        except Timeout:
            raise Timeout(f"job {self.id} did not finish within {timeout:.0f} s; it is {self.status()}") from None
        if outcome.result is not None:
            return outcome.result
        raise job_error(self.id, outcome.code or ErrorCode.INTERNAL, outcome.message or outcome.status)

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
