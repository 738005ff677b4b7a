"""Redis outages: how a long-running loop waits one out, and when heartbeats mean something again.

Every process that lives on Redis (worker, host agent, controller, janitor) keeps going through
an outage instead of exiting: `OutageBackoff` is the one wait between tries, used by all of
them. `OutageGuard` is for those that judge others by their heartbeats (janitor, controller):
after a Redis restart (or an outage the process noticed), heartbeat keys that expired while
Redis was away say nothing about the processes behind them, so each gets one heartbeat TTL
to write again before anyone calls it dead.

A refusal (`hostler.client.ConnectionFailed`: wrong password, missing permission) is no
outage and is never waited out: it is not a `redis.ConnectionError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

__all__ = ["REDIS_OUTAGE", "SETTLE_S", "OutageBackoff", "OutageGuard"]

# What a command raises while Redis cannot be reached (redis-py's own retries spent).
REDIS_OUTAGE = (redis.ConnectionError, redis.TimeoutError)
# The longest heartbeat TTL (a worker's, 10 s) plus one beat.
SETTLE_S = 12.0


class OutageBackoff:
    """The wait between tries while Redis is away: 0.1 s, doubling to at most 5 s; a success
    starts over. `wait` is how to pause (an Event's wait, so that a stop ends the pause)."""

    FIRST_S = 0.1
    MOST_S = 5.0

    def __init__(self, log: logging.Logger, wait: Callable[[float], object] = time.sleep) -> None:
        self._log = log
        self._wait = wait
        self.delay_s = self.FIRST_S

    def failed(self, exc: BaseException, what: str = "redis unavailable") -> None:
        """Says what failed and how long until the next try, then waits that long."""
        self._log.warning("%s (%s); retrying in %.1fs", what, exc, self.delay_s)
        self._wait(self.delay_s)
        self.delay_s = min(self.delay_s * 2, self.MOST_S)

    def succeeded(self) -> None:
        self.delay_s = self.FIRST_S


class OutageGuard:
    """Tells a janitor or controller whether heartbeats can be trusted right now."""

    def __init__(self) -> None:
        self._trust_after = 0.0

    def lost_redis(self) -> None:
        self._trust_after = time.monotonic() + SETTLE_S

    def settled(self, connection: redis.Redis) -> bool:
        if time.monotonic() < self._trust_after:
            return False
        uptime = int(connection.info("server").get("uptime_in_seconds", SETTLE_S))
        return uptime >= SETTLE_S
