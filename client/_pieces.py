"""A streamed job's text pieces, as the client hands them out."""

from __future__ import annotations

from collections.abc import Iterator

import redis
from hostler.schemas import CompletionResult, ErrorEvent, JobResult, TokenEvent

from ._errors import HostlerError, job_error
from ._events import Subscription, Waiter, follow


class Stream(Iterator[str]):
    """A job's text pieces; close() stops waiting even before the first piece was read.

    (A generator closed before it started never runs its finally block.)
    """

    def __init__(self, pieces: Iterator[str], subscription: Subscription, waiter: Waiter | None) -> None:
        self._pieces = pieces
        self._subscription = subscription
        self._waiter = waiter

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()
        if self._waiter is not None:
            self._waiter.release()
        self._subscription.close()


def stream_pieces(
    connection: redis.Redis, subscription: Subscription, job_id: str, deadline: float, waiter: Waiter | None
) -> Iterator[str]:
    """A job's text pieces; waiter is None for a job nobody waits on (a submitted one)."""
    emitted: list[str] = []
    ended = False
    try:
        for event in follow(connection, subscription, job_id, deadline, waiter):
            if isinstance(event, TokenEvent):
                emitted.append(event.text)
                yield event.text
            elif isinstance(event, ErrorEvent):
                ended = True
                raise job_error(job_id, event.code, event.message)
            else:
                ended = True
                # After a gap the done event comes from the stored result: send what was missed.
                result = completion(event.result)
                sent = "".join(emitted)
                if len(result.text) > len(sent):
                    yield result.text[len(sent) :]
    finally:
        if not ended and waiter is not None:
            waiter.release()
        subscription.close()


def completion(result: JobResult) -> CompletionResult:
    if not isinstance(result, CompletionResult):
        raise HostlerError(f"expected a completion result, got {result.kind}")
    return result
