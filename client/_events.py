"""Following one job's stream: pub/sub events in order, with the stored result as a fallback.

Pub/sub loses messages across a reconnect, so every event carries a sequence number;
a gap, or a long silence, sends the reader to the job record in rq, which always has
the whole result once the job has ended.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
from hostler.schemas import EVENT_ADAPTER, DoneEvent, ErrorEvent, StreamEvent, TokenEvent
from redis.client import PubSub

from ._errors import ConnectionFailed, Timeout
from ._rqstore import JobOutcome, read_outcome

# After this long without an event the reader checks the job record; a prompt being
# evaluated is silent, so this is a poll interval, not a failure.
SILENCE_POLL_S = 1.0
# A waiting client renews its job's waiting key this often, with this TTL: a client that
# dies or stops reading lets it lapse, and its job is canceled before a worker runs it.
WAITING_TTL_S = 6.0
RENEW_EVERY_S = 2.0


@dataclass
class Waiter:
    """The waiting key of one job, renewed while its client follows the job."""

    connection: redis.Redis
    key: str
    deadline: float
    _renewed_at: float = field(default_factory=time.monotonic, init=False)

    @staticmethod
    def ttl_ms(deadline: float) -> int:
        return max(1, int(min(WAITING_TTL_S, deadline - time.monotonic()) * 1000))

    def renew(self) -> None:
        now = time.monotonic()
        if now - self._renewed_at < RENEW_EVERY_S or now >= self.deadline:
            return
        try:
            self.connection.set(self.key, "1", px=self.ttl_ms(self.deadline))
            self._renewed_at = now
        except redis.RedisError:
            pass  # Redis is away; the next renewal tries again.

    def release(self) -> None:
        """The client stopped waiting: a job still queued is canceled at once, not at expiry."""
        try:
            self.connection.delete(self.key)
        except redis.RedisError:
            pass


class PubSubPool:
    """Reuses subscribed connections so that each job costs a SUBSCRIBE, not a TCP connect."""

    def __init__(self, connection: redis.Redis) -> None:
        self._connection = connection
        self._idle: list[PubSub] = []
        self._lock = threading.Lock()

    def acquire(self) -> PubSub:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        pubsub: PubSub = self._connection.pubsub()
        return pubsub

    def release(self, pubsub: PubSub, channel: str, *, healthy: bool) -> None:
        try:
            if healthy:
                pubsub.unsubscribe(channel)
                with self._lock:
                    if len(self._idle) < 32:
                        self._idle.append(pubsub)
                        return
            pubsub.close()
        except redis.RedisError:
            pubsub.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for pubsub in idle:
            pubsub.close()


@dataclass
class Subscription:
    """A job's channel, subscribed before the job is enqueued so no event can be missed."""

    pool: PubSubPool
    channel: str
    pubsub: PubSub = field(init=False)
    _healthy: bool = field(default=True, init=False)
    _closed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.pubsub = self.pool.acquire()
        try:
            self.pubsub.subscribe(self.channel)
            self._await_confirmation(deadline=time.monotonic() + 10.0)
        except redis.RedisError as exc:
            self.pubsub.close()
            raise ConnectionFailed(f"could not subscribe to {self.channel}: {exc}") from exc

    def _await_confirmation(self, deadline: float) -> None:
        # The SUBSCRIBE must be in effect before the enqueue reaches a worker.
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message and message["type"] == "subscribe" and _text(message["channel"]) == self.channel:
                return
        raise ConnectionFailed(f"no confirmation of SUBSCRIBE {self.channel} from Redis")

    def next_message(self, timeout: float) -> bytes | None:
        end = time.monotonic() + timeout
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return None
            try:
                message = self.pubsub.get_message(timeout=remaining)
            except redis.RedisError:
                self._healthy = False
                # Treated as silence: the caller falls back to the stored record.
                time.sleep(min(remaining, 0.2))
                return None
            if message and message["type"] == "message" and _text(message["channel"]) == self.channel:
                data = message["data"]
                return data if isinstance(data, bytes) else str(data).encode()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool.release(self.pubsub, self.channel, healthy=self._healthy)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def follow(
    connection: redis.Redis,
    subscription: Subscription,
    job_id: str,
    deadline: float,
    waiter: Waiter | None = None,
) -> Iterator[StreamEvent]:
    """Yields a job's events in order and always ends with a done or error event.

    On a gap in sequence numbers, or silence, it reads the job record instead and ends
    with a done or error event rebuilt from what the record stores.
    """
    expected = 0
    while True:
        if waiter is not None:
            waiter.renew()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"job {job_id} did not finish within its timeout")
        raw = subscription.next_message(min(remaining, SILENCE_POLL_S))
        if raw is None:
            outcome = read_outcome(connection, job_id)
            if outcome is not None:
                yield event_from_outcome(outcome, expected)
                return
            continue
        event = EVENT_ADAPTER.validate_json(raw)
        if event.seq != expected:
            yield event_from_outcome(wait_outcome(connection, job_id, deadline), expected)
            return
        expected += 1
        yield event
        if not isinstance(event, TokenEvent):
            return


def wait_outcome(connection: redis.Redis, job_id: str, deadline: float) -> JobOutcome:
    pause = 0.02
    while True:
        outcome = read_outcome(connection, job_id)
        if outcome is not None:
            return outcome
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"job {job_id} did not finish within its timeout")
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.5)


def event_from_outcome(outcome: JobOutcome, seq: int) -> DoneEvent | ErrorEvent:
    if outcome.result is not None:
        return DoneEvent(seq=seq, result=outcome.result)
    return ErrorEvent(seq=seq, code=outcome.code or "internal", message=outcome.message or outcome.status)
