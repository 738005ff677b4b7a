"""Publishing a job's stream events without making generation wait for Redis.

A PUBLISH round trip per token cost about 6 % of generation time on a 2-core machine;
here the generating thread only queues the event, and one sender thread pipelines
whatever has queued up. Order is kept (one thread, FIFO), the done event goes out
only after flush(), and each PUBLISH's receiver count still tells whether anyone
is listening.

A job's pieces go out at most every `stream interval` (50 ms unless
HOSTLER_STREAM_INTERVAL_MS says otherwise; 0 sends each piece as it comes): the first at
once, later ones joined into one token event. On a machine whose cores llama.cpp's threads
fill, every event wakes the sender thread, Redis and each reader (the AsyncClient, or the
gateway and its HTTP client), and each wake-up takes a core from the decode; one event
every 50 ms instead of one per token gave 6 % more tokens/s at one client through the
AsyncClient and 11 % through the gateway (scripts/bench_stream_interval.py,
docs/architecture.md), and 50 ms is below what a reader of streamed text can see.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import redis
from hostler.client._errors import ConnectionFailed
from hostler.schemas import DoneEvent, ErrorEvent, JobResult, TokenEvent, TokenLogprob

log = logging.getLogger("hostler.worker")

MAX_BATCH = 256
PROBE_EVERY_S = 0.5
STREAM_INTERVAL_ENV = "HOSTLER_STREAM_INTERVAL_MS"
DEFAULT_STREAM_INTERVAL_S = 0.05
MAX_STREAM_INTERVAL_MS = 1000.0


def stream_interval_s(environ: Mapping[str, str] = os.environ) -> float:
    """The stream interval HOSTLER_STREAM_INTERVAL_MS sets (milliseconds), else the default.

    Raises ValueError naming the variable when its value is not a number from 0 to 1000."""
    raw = environ.get(STREAM_INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_STREAM_INTERVAL_S
    try:
        ms = float(raw)
    except ValueError:
        ms = float("nan")
    if not 0 <= ms <= MAX_STREAM_INTERVAL_MS:  # also refuses nan
        raise ValueError(
            f"{STREAM_INTERVAL_ENV} must be a number of milliseconds from 0 to {MAX_STREAM_INTERVAL_MS:g}, not {raw!r}"
        )
    return ms / 1000


@dataclass
class JobEvents:
    """One job's channel and sequence numbers."""

    sender: EventSender
    channel: str
    grace_s: float
    seq: int = 0
    last_heard: float = field(default_factory=time.monotonic)
    _probed: float = 0.0
    # Pieces not sent yet, and when the last token event went out.
    _text: list[str] = field(default_factory=list)
    _logprobs: list[TokenLogprob] | None = None
    _sent_at: float = float("-inf")

    def token(self, text: str, logprobs: Sequence[TokenLogprob] | None = None) -> None:
        """A piece of the stream: sent now if the last event is a stream interval old, else
        joined to the next event (tick(), done() or error() send it)."""
        self._text.append(text)
        if logprobs is not None:
            if self._logprobs is None:
                self._logprobs = []
            self._logprobs.extend(logprobs)
        self.tick()

    def tick(self) -> None:
        """Sends the pieces held back once the stream interval since the last event has passed."""
        if self._text and time.monotonic() - self._sent_at >= self.sender.stream_interval_s:
            self._send_held()

    def drop_held(self) -> None:
        """Forgets the pieces held back: the job is someone else's now (taken from this worker)."""
        self._text, self._logprobs = [], None

    def _send_held(self) -> None:
        if not self._text:
            return
        event = TokenEvent(seq=self.seq, text="".join(self._text), logprobs=self._logprobs)
        self.sender.send(self, event.model_dump_json(exclude_none=True))
        self.seq += 1
        self._text, self._logprobs = [], None
        self._sent_at = time.monotonic()

    def abandoned(self) -> bool:
        """True when nobody has listened on this job's channel for the grace period.

        Receiver counts of published tokens say so for free; while nothing is published
        (a long prompt, a job that does not stream) the channel's subscribers are counted,
        at most every PROBE_EVERY_S.
        """
        now = time.monotonic()
        if now - self.last_heard <= self.grace_s:
            return False
        if now - self._probed >= PROBE_EVERY_S:
            self._probed = now
            if self.sender.listeners(self.channel):
                self.last_heard = now
                return False
        return now - self.last_heard > self.grace_s

    def done(self, result: JobResult) -> str:
        self._send_held()
        self.sender.flush()
        return DoneEvent(seq=self.seq, result=result).model_dump_json()

    def error(self, code: str, message: str) -> str:
        self._send_held()
        self.sender.flush()
        return ErrorEvent(seq=self.seq, code=code, message=message).model_dump_json()


class EventSender:
    def __init__(self, connection: redis.Redis, stream_interval_s: float = DEFAULT_STREAM_INTERVAL_S) -> None:
        self._connection = connection
        self.stream_interval_s = stream_interval_s
        self._queue: queue.SimpleQueue[tuple[JobEvents, str] | None] = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def send(self, job: JobEvents, payload: str) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put((job, payload))

    def listeners(self, channel: str) -> int:
        try:
            reply = self._connection.pubsub_numsub(channel)
        except (redis.RedisError, ConnectionFailed):
            return 1  # cannot tell: keep generating rather than drop a listener's job
        return int(reply[0][1]) if reply else 0

    def flush(self, timeout: float = 10.0) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            self._publish(batch)

    def _publish(self, batch: list[tuple[JobEvents, str]]) -> None:
        try:
            with self._connection.pipeline(transaction=False) as pipe:
                for job, payload in batch:
                    pipe.publish(job.channel, payload)
                receivers = pipe.execute()
        except (redis.RedisError, ConnectionFailed) as exc:
            # Lost token events are a gap the client fills from the stored result.
            log.warning("could not publish %d event(s): %s", len(batch), exc)
            receivers = [1] * len(batch)
        now = time.monotonic()
        for (job, _), count in zip(batch, receivers, strict=True):
            if count:
                job.last_heard = now
        with self._idle:
            self._pending -= len(batch)
            if self._pending == 0:
                self._idle.notify_all()
