"""Redis outages: how a long-running loop waits one out, and when heartbeats mean something again.

Every process that lives on Redis (worker, host agent, controller, janitor) keeps going through
an outage instead of exiting: `OutageBackoff` is the one wait between tries, used by all of
them. `OutageGuard` is for those that judge others by their heartbeats (janitor, controller):
after a Redis restart (or an outage the process noticed, or a failover to a replica: another
server answers, told by its run_id), heartbeat keys that expired while Redis was away say
nothing about the processes behind them, so each gets one heartbeat TTL to write again before
anyone calls it dead. The same holds for the waiting keys clients renew (`recovered`): a
failover longer than their TTL must not read as every client having left.

A refusal (`hostler.client.ConnectionFailed`: wrong password, missing permission) is no
outage and is never waited out: it is not a `redis.ConnectionError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

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
    """Tells a janitor, controller or worker whether keys others renew can be trusted right now."""

    def __init__(self) -> None:
        self._trust_after = 0.0
        self._run_id: str | None = None

    def lost_redis(self) -> None:
        self._trust_after = time.monotonic() + SETTLE_S

    def settled(self, connection: redis.Redis) -> bool:
        """Heartbeats can be judged: no outage or new server lately, and Redis up long enough."""
        info = self._server(connection)
        if time.monotonic() < self._trust_after:
            return False
        return int(info.get("uptime_in_seconds", SETTLE_S)) >= SETTLE_S

    def recovered(self, connection: redis.Redis) -> bool:
        """Keys clients renew can be judged: no outage or new server in the last SETTLE_S.

        Unlike `settled`, a young server is no reason to wait: a restarted one kept the keys'
        deadlines (persistence stores them absolute), and a fresh one has no jobs to judge.
        """
        self._server(connection)
        return time.monotonic() >= self._trust_after

    def _server(self, connection: redis.Redis) -> dict[str, Any]:
        info: dict[str, Any] = connection.info("server")
        run_id = str(info.get("run_id", ""))
        if self._run_id is not None and run_id != self._run_id:
            # Another server answers (a replica promoted, or a restart redis-py's retries hid).
            self.lost_redis()
        self._run_id = run_id
        return info
