"""Which gateway runs which Batch API batch: leases in Redis, renewed by their holder.

Every gateway looks at the set of unfinished batches once a second. A batch whose lease key is
absent is free: the first gateway to SET it (NX, with a TTL) runs it. The holder renews the TTL on
every look, with a compare-and-renew, so only the holder can. A gateway that dies (SIGKILL, a
lost machine) stops renewing, its leases lapse after LEASE_S, and another gateway, or this one
when it starts again, takes the batch over; the runner resumes without running again what ended
(batch_runner.py). A gateway stopped by SIGTERM lets go of its leases at once. A holder that
finds its lease taken (it was frozen past the TTL) stops its run: the new holder goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable

import redis.asyncio
from hostler.schemas import Keys, as_text

from .batch_runner import BatchRun

log = logging.getLogger("hostler.gateway")

LEASE_S = 10.0
LOOK_EVERY_S = 1.0

# KEYS: the lease. ARGV: holder, ttl ms. 1 if still held by that holder (and renewed).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class BatchLeases:
    """Takes leases on free batches and runs them, one task per batch, until the gateway stops."""

    def __init__(self, connection: redis.asyncio.Redis, keys: Keys, make_run: Callable[[str], BatchRun], *,
                 lease_s: float = LEASE_S, look_every_s: float = LOOK_EVERY_S) -> None:  # fmt: skip
        self.connection = connection
        self.keys = keys
        self.make_run = make_run
        self.lease_ms = int(lease_s * 1000)
        self.look_every_s = look_every_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.running: dict[str, tuple[BatchRun, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        self._outage_logged = False

    def wake(self) -> None:
        """Look now (a batch was just created here), not at the next second."""
        self._wake.set()

    async def serve(self) -> None:
        while True:
            try:
                await self.look()
                self._outage_logged = False
            except (redis.RedisError, OSError) as exc:
                if not self._outage_logged:
                    log.warning("batch leases: Redis unreachable (%s); trying again every second", exc)
                    self._outage_logged = True
            except Exception:
                log.exception("batch leases: one look failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.look_every_s)
            self._wake.clear()

    async def look(self) -> None:
        for batch_id, (_, task) in list(self.running.items()):
            if task.done():
                del self.running[batch_id]
                await self._release(batch_id)
                if not task.cancelled() and task.exception() is not None:
                    log.error("batch %s: its run failed; it is taken again", batch_id, exc_info=task.exception())
        active = sorted(as_text(m) for m in await self.connection.smembers(self.keys.api_batches_active))
        for batch_id in active:
            lease = self.keys.api_batch_lease(batch_id)
            if batch_id in self.running:
                run, task = self.running[batch_id]
                if int(await self.connection.eval(_RENEW, 1, lease, self.holder, self.lease_ms)):
                    await run.watch()
                else:
                    log.warning("batch %s: lease lost to another gateway; stopping here", batch_id)
                    task.cancel()
            elif await self.connection.set(lease, self.holder, nx=True, px=self.lease_ms):
                run = self.make_run(batch_id)
                self.running[batch_id] = (run, asyncio.create_task(run.drive(), name=f"batch {batch_id}"))
                log.info("batch %s: running it here (%s)", batch_id, self.holder)

    async def close(self) -> None:
        """Stops every run (their jobs stay queued) and lets go of the leases, so another gateway
        takes the batches over at once instead of after LEASE_S."""
        for _, task in self.running.values():
            task.cancel()
        for batch_id, (_, task) in list(self.running.items()):
            with contextlib.suppress(BaseException):
                await task
            with contextlib.suppress(redis.RedisError, OSError):
                await self._release(batch_id)
        self.running.clear()

    async def _release(self, batch_id: str) -> None:
        await self.connection.eval(_RELEASE, 1, self.keys.api_batch_lease(batch_id), self.holder)
