"""The sync client's I/O for following jobs: a pooled pub/sub connection per job.

What the events mean (order, gaps, silence) is _follow's EventOrder; this module only
listens, and renews the waiting key of a job its client waits on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
from hostler.schemas import JobResult, StreamEvent, as_text
from redis.client import PubSub

from ._errors import ConnectionFailed, HostlerError
from ._follow import RENEW_EVERY_S, EventOrder, FollowedJob, ending, waiting_ttl_ms
from ._steps import run_sync


@dataclass
class Waiter:
    """The waiting key of one job, renewed while its client follows the job."""

    connection: redis.Redis
    key: str
    deadline: float
    _renewed_at: float = field(default_factory=time.monotonic, init=False)

    def renew(self) -> None:
        now = time.monotonic()
        if now - self._renewed_at < RENEW_EVERY_S or now >= self.deadline:
            return
        try:
            self.connection.set(self.key, "1", px=waiting_ttl_ms(self.deadline))
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
            if message and message["type"] == "subscribe" and as_text(message["channel"]) == self.channel:
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
            if message and message["type"] == "message" and as_text(message["channel"]) == self.channel:
                data = message["data"]
                return data if isinstance(data, bytes) else str(data).encode()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool.release(self.pubsub, self.channel, healthy=self._healthy)


class Followed(FollowedJob):
    """One job this client follows on its own subscription; a closed one stops waiting.

    waiter is None for a job nobody waits on (a submitted one, followed through its handle).
    """

    def __init__(
        self, connection: redis.Redis, subscription: Subscription, order: EventOrder, waiter: Waiter | None
    ) -> None:
        super().__init__(order)
        self._connection = connection
        self._subscription = subscription
        self._waiter = waiter

    def events(self) -> Iterator[StreamEvent]:
        """The job's events in order; the last is its done or error event."""
        while not self._order.ended:
            if self._waiter is not None:
                self._waiter.renew()
            message = self._subscription.next_message(self._order.wait_s())
            event = run_sync(self._connection, self._order.next_event(message))
            if event is not None:
                yield event

    def result(self) -> JobResult:
        """The job's result; raises its error if it failed, Timeout past the deadline."""
        for event in self.events():
            result = ending(self.job_id, event)
            if result is not None:
                return result
        raise HostlerError(f"job {self.job_id} ended without a result")  # pragma: no cover - errors raise

    def close(self) -> None:
        if not self._first_close():
            return
        if self._waiter is not None and not self._order.ended:
            # Gave up (timeout, interrupt): a job still queued is canceled now, not at expiry.
            # An ended job's key just lapses, which saves a round trip per job.
            self._waiter.release()
        self._subscription.close()
