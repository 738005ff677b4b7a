"""Ending a job exactly once: its last event, its stored end, and the counts the worker reports.

Every way a job ends (a result, a failure, a cancel) goes through `JobEnds`, which publishes
the event, stores the end through the job store and waits out a Redis restart meanwhile: the
outcome exists only in this process, so giving up would turn a finished job into worker_died.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from hostler.client._errors import ConnectionFailed
from hostler.schemas import ErrorCode, JobResult, Keys
from hostler.worker.engines.protocol import EngineError
from hostler.worker.outage import REDIS_OUTAGE, OutageBackoff

from .events import EventSender, JobEvents
from .jobstore import Claimed, JobStore
from .payload import InvalidJob

log = logging.getLogger("hostler.worker")

# A streaming job whose channel has had no subscriber this long is abandoned.
LISTENER_GRACE_S = 2.0


class JobEnds:
    """Publishes and stores the end of the jobs one worker claimed, and counts them."""

    def __init__(self, store: JobStore, events: EventSender, keys: Keys, worker_name: str, hard: threading.Event):
        self.store = store
        self.events = events
        self.keys = keys
        self.worker_name = worker_name
        # Set by a second SIGTERM: the one thing that makes a job's end give up on Redis.
        self._hard = hard
        self.jobs_done = 0
        self.last_job_at: float | None = None
        self.mean_job_s: float | None = None

    def publisher(self, claimed: Claimed) -> JobEvents:
        return JobEvents(self.events, self.keys.channel(claimed.job.id), LISTENER_GRACE_S)

    def succeed(self, claimed: Claimed, publisher: JobEvents, result: JobResult) -> None:
        done = publisher.done(result)
        payload = result.model_dump(mode="json")
        self._end(claimed, lambda: self.store.succeed(claimed, payload, publisher.channel, done))

    def failed(self, claimed: Claimed, publisher: JobEvents, exc: Exception) -> None:
        """Ends a job with the error `exc` names; a Redis error is the worker's, not the job's."""
        if isinstance(exc, redis.RedisError | ConnectionFailed):
            raise exc
        if isinstance(exc, InvalidJob):
            self.fail(claimed, publisher, ErrorCode.INVALID_JOB, str(exc))
        elif isinstance(exc, EngineError):
            self.fail(claimed, publisher, exc.code, str(exc))
        else:
            log.error("job %s failed", claimed.job.id, exc_info=exc)
            self.fail(claimed, publisher, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    def cancel(self, claimed: Claimed, publisher: JobEvents, code: str, message: str) -> None:
        self._end(claimed, lambda: self.store.cancel(claimed, code, message, publisher.channel))

    def fail(self, claimed: Claimed, publisher: JobEvents, code: str, message: str) -> None:
        event = publisher.error(code, message)
        self._end(claimed, lambda: self.store.fail(claimed, code, message, publisher.channel, event))

    def _end(self, claimed: Claimed, write: Callable[[], bool]) -> None:
        """Stores a job's end, waiting out a Redis restart instead of exiting.

        Only a second SIGTERM gives up. The write is refused when the job is no longer this
        worker's (a janitor that judged it dead failed or retried it), and also when it is sent
        again after a lost reply: either way the job has ended once.
        """
        claimed.ending = True
        outage = OutageBackoff(log, self._hard.wait)
        while True:
            try:
                if not write():
                    log.warning(
                        "job %s had already ended or been queued again when %s came to end it; its outcome stands",
                        claimed.job.id,
                        self.worker_name,
                    )
                break
            except REDIS_OUTAGE as exc:
                if self._hard.is_set():
                    raise
                outage.failed(exc, f"could not store the end of job {claimed.job.id}")
        self.jobs_done += 1
        self.last_job_at = time.time()
        took = claimed.clock.ran_s()
        self.mean_job_s = took if self.mean_job_s is None else 0.8 * self.mean_job_s + 0.2 * took
