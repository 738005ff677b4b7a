"""The soak's load: streaming client threads and a batch feeder, and what each client saw.

N streaming client threads (one Client each) stream a short completion after another until the
duration ends, while a feeder submits M batch jobs at once (waiting out a full queue). Every
call records its job id and what its client received, for scripts/soak_audit.py to check.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from hostler import Client, HostlerError, JobFailed, JobHandle, QueueFull

__all__ = ["PROMPTS", "TEMPERATURE", "Load", "Settings", "StreamCall", "run_load"]

TEMPERATURE = 0.7

PROMPTS = (
    "Once upon a time, in a small village by the sea,",
    "The three most important ideas in the history of science are",
    "Q: Why is the sky blue?\nA:",
    "A message queue is useful in a web application because",
    "List five tips for writing clear documentation:\n1.",
)


def _prompt(kind: str, index: int, call: int) -> str:
    # Unique per job, and sampled with its own seed: a result delivered to the wrong client
    # then shows as a text mismatch instead of passing as an identical text.
    return f"{PROMPTS[(index + call) % len(PROMPTS)]} ({kind} {index}.{call})"


@dataclass
class StreamCall:
    job_id: str
    text: str
    latency_s: float
    first_piece_s: float | None
    error: str | None = None


@dataclass
class Load:
    """What the client threads saw; lists and counters are only appended to under `lock`."""

    calls: list[StreamCall] = field(default_factory=list)
    handles: list[JobHandle] = field(default_factory=list)
    calls_per_stream: list[int] = field(default_factory=list)
    client_errors: Counter[str] = field(default_factory=Counter)
    queue_full: int = 0
    not_submitted: int = 0
    started_wall: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, what: str) -> None:
        with self.lock:
            self.client_errors[what] += 1

    def refused(self) -> None:
        """A call that waited for room on the full queue (wait_when_full) until its bound."""
        with self.lock:
            self.queue_full += 1


@dataclass(frozen=True)
class Settings:
    url: str
    prefix: str | None
    model: str
    max_tokens: int
    call_timeout: float


def _stream_one(client: Client, settings: Settings, prompt: str, seed: int, until: float) -> StreamCall:
    """One streamed completion, waiting out a full queue until `until` (or its call timeout);
    raises QueueFull when the queue is still full then (nothing was enqueued)."""
    job_id: str | None = None
    pieces: list[str] = []
    first: float | None = None
    error: str | None = None
    started = time.monotonic()
    try:
        stream = client.stream(
            settings.model,
            prompt,
            max_tokens=settings.max_tokens,
            temperature=TEMPERATURE,
            seed=seed,
            timeout=settings.call_timeout,
            wait_when_full=max(0.0, until - time.monotonic()),
        )
        # The audit compares what the client received with what rq stored under this id.
        job_id = stream.job_id
        for piece in stream:
            if first is None:
                first = time.monotonic() - started
            pieces.append(piece)
    except QueueFull:
        raise
    except JobFailed as exc:
        error = f"JobFailed({exc.code})"
    except HostlerError as exc:
        error = type(exc).__name__
    if job_id is None:
        # Raised before anything was enqueued (no job id): nothing to audit, only to report.
        raise RuntimeError(error or "stream() started no job")
    return StreamCall(job_id, "".join(pieces), time.monotonic() - started, first, error)


def _stream_loop(settings: Settings, index: int, deadline: float, load: Load) -> None:
    calls = 0
    rng = random.Random(index)
    client = Client(settings.url, prefix=settings.prefix, timeout=settings.call_timeout)
    try:
        while time.monotonic() < deadline:
            try:
                call = _stream_one(client, settings, _prompt("stream", index, calls), rng.randrange(2**32), deadline)
            except QueueFull:
                load.refused()
                continue
            calls += 1
            with load.lock:
                load.calls.append(call)
            if call.error is not None:
                load.error(f"stream: {call.error}")
    except Exception as exc:  # noqa: BLE001 - a thread must report, not die silently
        load.error(f"stream thread: {type(exc).__name__}: {exc}")
    finally:
        client.close()
        with load.lock:
            load.calls_per_stream.append(calls)


def _feed(client: Client, settings: Settings, count: int, deadline: float, load: Load) -> None:
    rng = random.Random(-1)
    submitted = 0
    try:
        while submitted < count and time.monotonic() < deadline:
            try:
                handle = client.submit(
                    settings.model,
                    _prompt("batch", 0, submitted),
                    max_tokens=settings.max_tokens,
                    temperature=TEMPERATURE,
                    seed=rng.randrange(2**32),
                    priority="batch",
                    wait_when_full=max(0.0, deadline - time.monotonic()),
                )
            except QueueFull:
                load.refused()
                continue
            submitted += 1
            with load.lock:
                load.handles.append(handle)
    except Exception as exc:  # noqa: BLE001 - a thread must report, not die silently
        load.error(f"feeder: {type(exc).__name__}: {exc}")
    finally:
        load.not_submitted = count - submitted


def run_load(
    feeder: Client, settings: Settings, duration: float, streams: int, batch: int, settle_timeout: float
) -> Load:
    load = Load(started_wall=time.time())
    deadline = time.monotonic() + duration
    threads = [
        threading.Thread(target=_stream_loop, args=(settings, i, deadline, load), name=f"soak-stream-{i}", daemon=True)
        for i in range(streams)
    ]
    # The feeder may keep retrying a full queue past the duration, but not past the settle time.
    feeder_deadline = deadline + settle_timeout
    feed_args = (feeder, settings, batch, feeder_deadline, load)
    threads.append(threading.Thread(target=_feed, args=feed_args, name="soak-feeder", daemon=True))
    for thread in threads:
        thread.start()
    join_by = feeder_deadline + settings.call_timeout + 10
    for thread in threads:
        thread.join(max(0.0, join_by - time.monotonic()))
        if thread.is_alive():
            load.error(f"{thread.name} still running at the join deadline")
    return load
