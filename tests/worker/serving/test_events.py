"""A job's stream events against a real Redis: pieces within the stream interval join into one
token event, the first goes at once, nothing is lost or reordered, and a bad
HOSTLER_STREAM_INTERVAL_MS is refused by name."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from hostler.schemas import CompletionResult, JobResult, TokenLogprob, Usage
from hostler.worker.cli.main import main as cli
from hostler.worker.serving.events import (
    DEFAULT_STREAM_INTERVAL_S,
    STREAM_INTERVAL_ENV,
    EventSender,
    JobEvents,
    stream_interval_s,
)

CHANNEL = "hostler:test-events"
INTERVAL_S = 1.0


@pytest.fixture
def listener(connection: redis.Redis) -> Iterator[Any]:
    pubsub = connection.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(CHANNEL)
    confirmed = pubsub.get_message(timeout=5)
    assert confirmed is not None and confirmed["type"] == "subscribe"
    yield pubsub
    pubsub.close()


def received(pubsub: Any, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.05)
        if message is not None:
            events.append(json.loads(message["data"]))
    return events


def result(text: str) -> JobResult:
    usage = Usage(prompt_tokens=1, completion_tokens=3)
    return CompletionResult(model="m", text=text, finish_reason="stop", usage=usage)


def logprob(token: str) -> TokenLogprob:
    return TokenLogprob(token=token, logprob=-0.5, bytes=list(token.encode()), top_logprobs=[])


@pytest.fixture
def sender(connection: redis.Redis) -> Iterator[EventSender]:
    # Long enough that a slow machine's receive between two pieces never reaches it.
    sender = EventSender(connection, stream_interval_s=INTERVAL_S)
    yield sender
    sender.close()


def test_pieces_within_the_interval_join_into_one_event(sender: EventSender, listener: Any) -> None:
    job = JobEvents(sender, CHANNEL, grace_s=60)
    job.token("Once", [logprob("Once")])
    first = received(listener, 1)
    assert [e["text"] for e in first] == ["Once"]  # the first piece goes at once
    job.token(" upon", [logprob(" upon")])
    job.token(" a", [logprob(" a")])
    job.tick()
    sender.flush()
    assert received(listener, 1, timeout=0.1) == []  # held: the interval has not passed
    time.sleep(INTERVAL_S + 0.05)
    job.tick()
    joined = received(listener, 1)
    assert [(e["seq"], e["text"]) for e in joined] == [(1, " upon a")]
    assert [lp["token"] for lp in joined[0]["logprobs"]] == [" upon", " a"]
    job.token(" time", [logprob(" time")])
    done = json.loads(job.done(result("Once upon a time")))
    last = received(listener, 1)
    # What was held goes out before the done event, and the sequence has no gap.
    assert [(e["seq"], e["text"]) for e in last] == [(2, " time")]
    assert done["seq"] == 3 and done["type"] == "done"


def test_an_error_sends_the_held_pieces_first(sender: EventSender, listener: Any) -> None:
    job = JobEvents(sender, CHANNEL, grace_s=60)
    job.token("a")
    job.token("b")
    error = json.loads(job.error("timeout", "ran past its timeout"))
    events = received(listener, 2)
    assert [(e["seq"], e["text"]) for e in events] == [(0, "a"), (1, "b")]
    assert error["seq"] == 2 and error["code"] == "timeout"


def test_dropped_pieces_are_never_sent(sender: EventSender, listener: Any) -> None:
    job = JobEvents(sender, CHANNEL, grace_s=60)
    job.token("mine")
    job.token(" lost")
    job.drop_held()  # the job was taken from this worker
    done = json.loads(job.done(result("mine")))
    assert [(e["seq"], e["text"]) for e in received(listener, 2, timeout=0.5)] == [(0, "mine")]
    assert done["seq"] == 1


def test_interval_zero_sends_every_piece(connection: redis.Redis, listener: Any) -> None:
    sender = EventSender(connection, stream_interval_s=0.0)
    try:
        job = JobEvents(sender, CHANNEL, grace_s=60)
        for piece in ("a", "b", "c"):
            job.token(piece)
        sender.flush()
        assert [e["text"] for e in received(listener, 3)] == ["a", "b", "c"]
    finally:
        sender.close()


@pytest.mark.parametrize(("value", "seconds"), [(None, DEFAULT_STREAM_INTERVAL_S), ("0", 0.0), (" 20 ", 0.02)])
def test_stream_interval_from_the_environment(value: str | None, seconds: float) -> None:
    environ = {} if value is None else {STREAM_INTERVAL_ENV: value}
    assert stream_interval_s(environ) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["fast", "-5", "1e9", "nan"])
def test_a_bad_stream_interval_is_refused_by_name(value: str) -> None:
    with pytest.raises(ValueError, match=f"{STREAM_INTERVAL_ENV} must be a number of milliseconds") as caught:
        stream_interval_s({STREAM_INTERVAL_ENV: value})
    assert repr(value) in str(caught.value)


@pytest.mark.parametrize("command", [["worker", "--model", "tiny"], ["host"], ["up", "--no-demo"]])
def test_commands_refuse_a_bad_stream_interval_before_starting(command: list[str], tmp_path: Any) -> None:
    runner = CliRunner()
    outcome = runner.invoke(
        cli,
        [*command, "--models", str(tmp_path), "--redis", "redis://127.0.0.1:1/0"],
        env={STREAM_INTERVAL_ENV: "soon"},
    )
    assert outcome.exit_code == 2, outcome.output
    assert STREAM_INTERVAL_ENV in outcome.output and "'soon'" in outcome.output
