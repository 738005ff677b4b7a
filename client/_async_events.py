"""Following jobs from asyncio: one subscribed connection and one renewal task for all of them.

A process with thousands of jobs in flight must not hold thousands of connections or
tasks renewing keys, so the AsyncClient multiplexes: an EventHub owns a single pub/sub
connection and routes each message to the queue of its job's channel; WaitingKeys renews
every waiting key in one pipelined round trip. Ordering, gaps and silence are handled as
in the sync client: sequence numbers, then the stored record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio
from hostler.schemas import EVENT_ADAPTER, StreamEvent, TokenEvent

from . import _reads as reads
from ._errors import ConnectionFailed, Timeout
from ._events import RENEW_EVERY_S, SILENCE_POLL_S, WAITING_TTL_S, event_from_outcome
from ._outcome import JobOutcome

log = logging.getLogger(__name__)
# Silence polls back off to this: with thousands of queued jobs, polling each every second
# would be thousands of reads a second for events that mostly arrive by pub/sub anyway.
MAX_SILENCE_POLL_S = 5.0
SUBSCRIBE_TIMEOUT_S = 10.0


class EventHub:
    """One pub/sub connection shared by every job this client follows."""

    def __init__(self, connection: redis.asyncio.Redis) -> None:
        self._pubsub: Any = connection.pubsub()
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def subscribe(self, channel: str) -> asyncio.Queue[bytes]:
        """The channel's message queue, once Redis has confirmed the subscription."""
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        confirmed = asyncio.get_running_loop().create_future()
        self._queues[channel] = queue
        self._confirmations[channel] = confirmed
        try:
            async with self._lock:
                await self._pubsub.subscribe(channel)
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.create_task(self._read(), name="hostler-events")
            await asyncio.wait_for(confirmed, SUBSCRIBE_TIMEOUT_S)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._forget(channel)
            raise ConnectionFailed(f"could not subscribe to {channel}: {exc or 'no confirmation'}") from exc
        return queue

    async def unsubscribe(self, channel: str) -> None:
        self._forget(channel)
        with contextlib.suppress(redis.RedisError, OSError):
            async with self._lock:
                await self._pubsub.unsubscribe(channel)

    def _forget(self, channel: str) -> None:
        self._queues.pop(channel, None)
        self._confirmations.pop(channel, None)

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                # Followers fall back to the stored records while the connection is away;
                # redis-py subscribes again when it reconnects.
                log.debug("pub/sub read failed: %s", exc)
                await asyncio.sleep(0.2)
                continue
            if message is None:
                continue
            channel = reads.text(message["channel"])
            if message["type"] == "subscribe":
                confirmed = self._confirmations.pop(channel, None)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)
            elif message["type"] == "message":
                queue = self._queues.get(channel)
                if queue is not None:
                    data = message["data"]
                    queue.put_nowait(data if isinstance(data, bytes) else str(data).encode())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        with contextlib.suppress(redis.RedisError, OSError):
            await self._pubsub.aclose()


class WaitingKeys:
    """The waiting keys of every job this client waits on, renewed together."""

    def __init__(self, connection: redis.asyncio.Redis) -> None:
        self._connection = connection
        self._deadlines: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def ttl_ms(deadline: float) -> int:
        return max(1, int(min(WAITING_TTL_S, deadline - time.monotonic()) * 1000))

    def watch(self, key: str, deadline: float) -> None:
        self._deadlines[key] = deadline
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._renew(), name="hostler-waiting-keys")

    def forget(self, key: str) -> None:
        """The job ended: its key just lapses, which saves a round trip per job."""
        self._deadlines.pop(key, None)

    async def release(self, key: str) -> None:
        """The client stopped waiting: a job still queued is canceled at once, not at expiry."""
        self._deadlines.pop(key, None)
        with contextlib.suppress(redis.RedisError, OSError):
            await self._connection.delete(key)

    async def _renew(self) -> None:
        while self._deadlines:
            await asyncio.sleep(RENEW_EVERY_S)
            now = time.monotonic()
            live = [(key, deadline) for key, deadline in self._deadlines.items() if deadline > now]
            if not live:
                continue
            try:
                async with self._connection.pipeline(transaction=False) as pipe:
                    for key, deadline in live:
                        pipe.set(key, "1", px=self.ttl_ms(deadline))
                    await pipe.execute()
            except (redis.RedisError, OSError) as exc:
                log.debug("renewing waiting keys failed: %s", exc)  # the next round tries again

    async def close(self) -> None:
        self._deadlines.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def follow(
    connection: redis.asyncio.Redis, queue: asyncio.Queue[bytes], job_id: str, deadline: float
) -> AsyncIterator[StreamEvent]:
    """Yields a job's events in order and always ends with a done or error event."""
    expected = 0
    poll = SILENCE_POLL_S
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"job {job_id} did not finish within its timeout")
        try:
            raw = await asyncio.wait_for(queue.get(), min(remaining, poll))
        except TimeoutError:
            outcome = await _read_outcome(connection, job_id)
            if outcome is not None:
                yield event_from_outcome(outcome, expected)
                return
            poll = min(poll * 1.5, MAX_SILENCE_POLL_S)
            continue
        poll = SILENCE_POLL_S
        event = EVENT_ADAPTER.validate_json(raw)
        if event.seq != expected:
            yield event_from_outcome(await wait_outcome(connection, job_id, deadline), expected)
            return
        expected += 1
        yield event
        if not isinstance(event, TokenEvent):
            return


async def _read_outcome(connection: redis.asyncio.Redis, job_id: str) -> JobOutcome | None:
    try:
        return await reads.run_async(connection, reads.job_outcome(job_id))
    except (redis.RedisError, OSError):
        return None  # Redis is away: treated as "not ended yet", the next poll tries again


async def wait_outcome(connection: redis.asyncio.Redis, job_id: str, deadline: float) -> JobOutcome:
    pause = 0.02
    while True:
        outcome = await _read_outcome(connection, job_id)
        if outcome is not None:
            return outcome
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"job {job_id} did not finish within its timeout")
        await asyncio.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.5)
