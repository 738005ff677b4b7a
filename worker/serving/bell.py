"""Hearing a model's bell between steps without a round trip to Redis.

Every enqueue (and every job put back on a queue) rings `hostler:bell:<model>` twice: it pushes
onto the list of that name, which an idle worker blocks on (one ring wakes one worker), and
publishes on the channel of that name, which every busy worker of the model listens to (it
subscribes at its first look between steps; a worker that was never busy holds no
subscription). A busy worker looks for a new job only after a ring since its last empty look;
popping the list for that would cost a round trip every step (a round trip that waits for Redis
to get a core back from llama.cpp's threads) and would steal rings meant for an idle replica.

A published ring is lost when the subscription is down (a Redis restart, a failover, the moment
before the subscription is confirmed), and rq's own enqueue does not ring at all, so the
listener also says "look" when it has not said so for `LOOK_EVERY_S`.
"""

from __future__ import annotations

import logging
import time

import redis
from redis.client import PubSub

__all__ = ["LOOK_EVERY_S", "BellListener"]

log = logging.getLogger("hostler.worker")

# The longest a job enqueued without a heard ring waits for a busy worker to look.
LOOK_EVERY_S = 0.5


class BellListener:
    """A subscription to one bell channel, read without blocking between two engine steps."""

    def __init__(self, connection: redis.Redis, channel: str) -> None:
        self._connection = connection
        self._channel = channel
        self._pubsub: PubSub | None = None
        self._last_look = 0.0

    def rang(self) -> bool:
        """Whether to look for a job now: a ring was heard, the subscription is not up, or the
        last look was too long ago. Reads every ring waiting on the socket, so none is counted
        twice."""
        heard = self.drain() if self._pubsub is not None else self._subscribe()
        now = time.monotonic()
        if heard or now - self._last_look >= LOOK_EVERY_S:
            self._last_look = now
            return True
        return False

    def drain(self) -> bool:
        """Reads the rings waiting on the socket, if subscribed (never blocks); True if one was
        heard or the subscription was lost, so that a ring sent meanwhile may have been missed."""
        if self._pubsub is None:
            return False
        try:
            heard = False
            # A subscription's confirmation reads as None and ends the loop early: what came
            # after it is read at the next step.
            while self._pubsub.get_message(timeout=0.0) is not None:
                heard = True
            return heard
        except (redis.RedisError, OSError) as exc:
            self._lost(exc)
            return True

    def _subscribe(self) -> bool:
        """Subscribes; always True: rings sent before the subscription was up were not heard."""
        try:
            self._pubsub = self._connection.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            self._pubsub.subscribe(self._channel)
        except (redis.RedisError, OSError) as exc:
            self._lost(exc)
        return True

    def _lost(self, exc: Exception) -> None:
        log.debug("bell subscription lost (%s); looking for jobs on a timer until it is back", exc)
        self.close()

    def close(self) -> None:
        if self._pubsub is None:
            return
        pubsub, self._pubsub = self._pubsub, None
        try:
            pubsub.close()
        except (redis.RedisError, OSError):
            pass
