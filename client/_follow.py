"""Following one job: the state machine both clients drive, with no I/O of its own.

Pub/sub loses messages across a reconnect, so every event carries a sequence number. A gap
sends the follower to the job record in rq, which always has the whole result once the job
has ended; so does silence (a prompt being evaluated is silent, so silence is a poll
interval, not a failure). The sync client feeds it from a pooled pub/sub connection per
job (_events), the async client from one shared connection (_async_events); both read the
record through the same steps.
"""

from __future__ import annotations

import time

import redis
from hostler.schemas import EVENT_ADAPTER, DoneEvent, ErrorEvent, JobResult, StreamEvent, TokenEvent

from . import _reads as reads
from ._errors import Timeout, job_error
from ._outcome import JobOutcome
from ._steps import Pause, Steps

# After this long without an event the follower checks the job record.
SILENCE_POLL_S = 1.0
# The async client's silence polls back off to this: with thousands of queued jobs, polling
# each every second would be thousands of reads a second for events that mostly arrive anyway.
MAX_SILENCE_POLL_S = 5.0
# A waiting client renews its job's waiting key this often, with this TTL: a client that
# dies or stops reading lets it lapse, and its job is canceled before a worker runs it.
WAITING_TTL_S = 6.0
RENEW_EVERY_S = 2.0


def waiting_ttl_ms(deadline: float) -> int:
    return max(1, int(min(WAITING_TTL_S, deadline - time.monotonic()) * 1000))


class EventOrder:
    """One job's events in order, ending with exactly one done or error event.

    The driver asks `wait_s()` how long to listen, then runs `next_event(message)` with the
    message heard, or None after silence; an event it returns is handed on, None means keep
    listening. `ended` is set once the done or error event has been handed out.
    """

    def __init__(self, job_id: str, deadline: float, *, max_poll_s: float, check_first: bool = False) -> None:
        self.job_id = job_id
        self.deadline = deadline
        self.ended = False
        self._expected = 0
        self._max_poll_s = max_poll_s
        # A job followed after it was submitted may have ended already: look at once.
        self._poll_s = 0.0 if check_first else SILENCE_POLL_S

    def wait_s(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"job {self.job_id} did not finish within its timeout")
        return min(remaining, self._poll_s)

    def next_event(self, message: bytes | None) -> Steps[StreamEvent | None]:
        if message is None:
            outcome = yield from stored_outcome(self.job_id)
            if outcome is None:
                self._poll_s = min(max(self._poll_s * 1.5, SILENCE_POLL_S), self._max_poll_s)
                return None
            return self._end(outcome)
        self._poll_s = SILENCE_POLL_S
        event = EVENT_ADAPTER.validate_json(message)
        if event.seq != self._expected:
            return self._end((yield from wait_outcome(self.job_id, self.deadline)))
        self._expected += 1
        self.ended = not isinstance(event, TokenEvent)
        return event

    def _end(self, outcome: JobOutcome) -> DoneEvent | ErrorEvent:
        self.ended = True
        return event_from_outcome(outcome, self._expected)


class FollowedJob:
    """What both clients' followed jobs share: the job id, its EventOrder, closing once."""

    def __init__(self, order: EventOrder) -> None:
        self.job_id = order.job_id
        self._order = order
        self._closed = False

    def _first_close(self) -> bool:
        """True on the first close only: a stream closes its job when it ends and again on close()."""
        first, self._closed = not self._closed, True
        return first


def stored_outcome(job_id: str) -> Steps[JobOutcome | None]:
    """The job's stored end, or None while it runs or while Redis cannot be reached."""
    try:
        return (yield from reads.job_outcome(job_id))
    except (redis.RedisError, OSError):
        return None  # the next poll tries again


def wait_outcome(job_id: str, deadline: float) -> Steps[JobOutcome]:
    """The job's stored end, polled for (the job may still be writing it) until the deadline."""
    pause = 0.02
    while True:
        outcome = yield from stored_outcome(job_id)
        if outcome is not None:
            return outcome
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"job {job_id} did not finish within its timeout")
        yield Pause(min(pause, remaining))
        pause = min(pause * 2, 0.5)


def event_from_outcome(outcome: JobOutcome, seq: int) -> DoneEvent | ErrorEvent:
    if outcome.result is not None:
        return DoneEvent(seq=seq, result=outcome.result)
    return ErrorEvent(seq=seq, code=outcome.code or "internal", message=outcome.message or outcome.status)


def ending(job_id: str, event: StreamEvent) -> JobResult | None:
    """The result a done event carries; raises the job's error for an error event."""
    if isinstance(event, ErrorEvent):
        raise job_error(job_id, event.code, event.message)
    if isinstance(event, DoneEvent):
        return event.result
    return None


def not_finished(job_id: str, timeout: float, status: str) -> Timeout:
    return Timeout(f"job {job_id} did not finish within {timeout:.0f} s; it is {status}")
