"""Heartbeats are judged only once Redis has been up longer than they live.

After a Redis restart (or an outage the process noticed), heartbeat keys that expired while
Redis was away say nothing about the processes behind them: each gets one heartbeat TTL to
write again before anyone calls it dead.
"""

from __future__ import annotations

import time

import redis

# The longest heartbeat TTL (a worker's, 10 s) plus one beat.
SETTLE_S = 12.0


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
