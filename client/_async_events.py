"""Following jobs from asyncio: one subscribed connection and one renewal task for all of them.

A process with thousands of jobs in flight must not hold thousands of connections or
tasks renewing keys, so the AsyncClient multiplexes: an EventHub owns a single pub/sub
connection and routes each message to the queue of its job's channel; WaitingKeys renews
every waiting key in one pipelined round trip. Ordering, gaps and silence are handled as
in the sync client, by the same EventOrder (_follow).
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
from hostler.schemas import JobResult, StreamEvent, as_text

from ._errors import ConnectionFailed, HostlerError
from ._follow import RENEW_EVERY_S, EventOrder, FollowedJob, ending, waiting_ttl_ms
from ._steps import run_async

log = logging.getLogger(__name__)
SUBSCRIBE_TIMEOUT_S = 10.0
# A subscribe that found the shared connection coming back tries again after this long.
RESUBSCRIBE_S = 0.05
# What a command on the shared pub/sub connection raises when that connection goes away. The
# reader task and a (un)subscribe share it: when the reader's read fails (a failover, a restart)
# redis-py disconnects it, and a send already past its connected check then finds no writer
# (AttributeError on None) instead of a ConnectionError. Whichever of them touches it next
# connects it again; when both do at once, the second to read the handshake's reply gets
# asyncio's RuntimeError ("read() called while another coroutine is already waiting").
_CONNECTION_LOST = (redis.RedisError, OSError, AttributeError, RuntimeError)


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
        deadline = time.monotonic() + SUBSCRIBE_TIMEOUT_S
        try:
            await self._send_subscribe(channel, deadline)
            await asyncio.wait_for(confirmed, max(0.0, deadline - time.monotonic()))
        except (*_CONNECTION_LOST, TimeoutError) as exc:
            self._forget(channel)
            raise ConnectionFailed(f"could not subscribe to {channel}: {exc or 'no confirmation'}") from exc
        return queue

    async def _send_subscribe(self, channel: str, deadline: float) -> None:
        """SUBSCRIBE on the shared connection. While that connection is coming back (after a
        failover, every job a client starts at that moment subscribes), it is sent again until
        the deadline: the job is not even enqueued yet, and refusing it would lose nothing but
        make its caller start over."""
        while True:
            try:
                async with self._lock:
                    await self._pubsub.subscribe(channel)
                    if self._reader is None or self._reader.done():
                        self._reader = asyncio.create_task(self._read(), name="hostler-events")
                return
            except _CONNECTION_LOST:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(RESUBSCRIBE_S)

    async def unsubscribe(self, channel: str) -> None:
        self._forget(channel)
        # Best effort: a channel left subscribed (redis-py subscribes again what it still lists
        # after a reconnect) only brings messages that no queue takes.
        with contextlib.suppress(*_CONNECTION_LOST):
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
            except _CONNECTION_LOST as exc:
                # Followers fall back to the stored records while the connection is away;
                # redis-py subscribes again when it reconnects.
                log.debug("pub/sub read failed: %s", exc)
                await asyncio.sleep(0.2)
                continue
            if message is None:
                continue
            channel = as_text(message["channel"])
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
                        pipe.set(key, "1", px=waiting_ttl_ms(deadline))
                    await pipe.execute()
            except (redis.RedisError, OSError) as exc:
                log.debug("renewing waiting keys failed: %s", exc)  # the next round tries again

    async def close(self) -> None:
        self._deadlines.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class AsyncFollowed(FollowedJob):
    """One job this client follows: its channel's queue and, when it waits on the job, its
    waiting key (None for a submitted job followed through its handle)."""

    def __init__(
        self,
        connection: redis.asyncio.Redis,
        hub: EventHub,
        channel: str,
        queue: asyncio.Queue[bytes],
        order: EventOrder,
        waiting: tuple[WaitingKeys, str] | None,
    ) -> None:
        super().__init__(order)
        self._connection = connection
        self._hub = hub
        self._channel = channel
        self._queue = queue
        self._waiting = waiting

    async def events(self) -> AsyncIterator[StreamEvent]:
        """The job's events in order; the last is its done or error event."""
        while not self._order.ended:
            wait_s = self._order.wait_s()
            try:
                message: bytes | None = await asyncio.wait_for(self._queue.get(), wait_s)
            except TimeoutError:
                message = None
            event = await run_async(self._connection, self._order.next_event(message))
            if event is not None:
                yield event

    async def result(self) -> JobResult:
        """The job's result; raises its error if it failed, Timeout past the deadline."""
        async for event in self.events():
            result = ending(self.job_id, event)
            if result is not None:
                return result
        raise HostlerError(f"job {self.job_id} ended without a result")  # pragma: no cover - errors raise

    async def aclose(self) -> None:
        if not self._first_close():
            return
        if self._waiting is not None:
            keys, key = self._waiting
            if self._order.ended:
                keys.forget(key)
            else:
                # Gave up (timeout, cancellation, aclose): a job still queued is canceled now.
                await keys.release(key)
        await self._hub.unsubscribe(self._channel)
