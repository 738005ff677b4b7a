"""client.pull: ask a host agent to download a model from the hub, and follow its progress.

The request goes on the host's pull list after the client has subscribed to the pull's
channel, so no event is missed; the agent publishes progress, then done or error (see
hostler.schemas._pulls). A client that hears nothing for a while reads the pull's state key,
and gives up with a clear error when the agent never took the request or stopped reporting.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import redis
from hostler.schemas import (
    PULL_EVENT_ADAPTER,
    Keys,
    PullDoneEvent,
    PullErrorEvent,
    PullEvent,
    PullProgressEvent,
    PullRequest,
    PullResult,
    field_errors,
)
from pydantic import ValidationError

from ._errors import HostlerError, InvalidRequest, Timeout
from ._reads import host_states, run_sync

# An agent takes a request within a step (half a second) and reports at least every
# PROGRESS_EVERY_S while downloading; this much silence means it is not there.
SILENCE_LIMIT_S = 30.0
# Silence this long sends the client to the state key, in case a message was missed.
POLL_AFTER_S = 2.0

PullCallback = Callable[[PullProgressEvent], None]


def pull(
    connection: redis.Redis,
    keys: Keys,
    repo: str,
    *,
    file: str | None = None,
    quant: str | None = None,
    revision: str = "main",
    model_id: str | None = None,
    host: str | None = None,
    progress: PullCallback | None = None,
    timeout: float | None = None,
) -> PullResult:
    target = _choose_host(connection, keys, host)
    try:
        request = PullRequest(
            pull_id=uuid.uuid4().hex,
            repo=repo,
            file=file,
            quant=quant,
            revision=revision,
            model_id=model_id,
            requested_at=time.time(),
        )
    except ValidationError as exc:
        first = field_errors(exc)[0]
        raise InvalidRequest(f"invalid {first.path}: {first.message}") from None
    if file is not None and quant is not None:
        raise InvalidRequest("give file or quant, not both")
    new_pubsub: Callable[[], redis.client.PubSub] = connection.pubsub  # redis-py leaves it unannotated
    pubsub = new_pubsub()
    try:
        pubsub.subscribe(keys.pull_channel(request.pull_id))
        _confirmed(pubsub)
        blob = request.model_dump_json()
        with connection.pipeline(transaction=False) as pipe:
            pipe.rpush(keys.pulls(target), blob)
            pipe.rpush(keys.wake(target), "pull")
            pipe.execute()
        return _follow(connection, keys, pubsub, request, blob, target, progress, timeout)
    finally:
        pubsub.close()


def _choose_host(connection: redis.Redis, keys: Keys, host: str | None) -> str:
    live = sorted(state.host for state in run_sync(connection, host_states(keys)))
    if host is not None:
        if host not in live:
            raise InvalidRequest(f"host {host!r} is not live; live hosts: {', '.join(live) or 'none'}")
        return host
    if not live:
        raise HostlerError("no live host to pull on (is `hostler up` or `hostler host` running against this Redis?)")
    if len(live) > 1:
        raise InvalidRequest(f"several hosts are live ({', '.join(live)}): say which one pulls with host=")
    return live[0]


def _confirmed(pubsub: redis.client.PubSub) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
        if message is not None and message["type"] == "subscribe":
            return
    raise Timeout("Redis did not confirm the subscription to the pull's channel within 10 s")


def _follow(
    connection: redis.Redis,
    keys: Keys,
    pubsub: redis.client.PubSub,
    request: PullRequest,
    blob: str,
    host: str,
    progress: PullCallback | None,
    timeout: float | None,
) -> PullResult:
    deadline = None if timeout is None else time.monotonic() + timeout
    heard = time.monotonic()
    while True:
        if deadline is not None and time.monotonic() > deadline:
            _withdraw(connection, keys, host, blob)
            raise Timeout(
                f"pull of {request.repo} on {host} did not finish within {timeout:g} s "
                "(a download that started goes on there; pull again later to pick it up)"
            )
        message = pubsub.get_message(timeout=0.5)
        event: PullEvent | None = None
        if message is not None and message["type"] == "message":
            event = PULL_EVENT_ADAPTER.validate_json(message["data"])
        elif time.monotonic() - heard > POLL_AFTER_S:
            state = connection.get(keys.pull_state(request.pull_id))
            if state is not None:
                event = PULL_EVENT_ADAPTER.validate_json(state)
                if isinstance(event, PullProgressEvent):
                    heard = time.monotonic()  # the agent is there; the channel just lost a message
                    continue
            elif time.monotonic() - heard > SILENCE_LIMIT_S:
                taken = _withdraw(connection, keys, host, blob) == 0
                what = "stopped reporting on" if taken else "did not take"
                raise HostlerError(
                    f"host {host} {what} the pull of {request.repo} for {SILENCE_LIMIT_S:.0f} s "
                    "(is its host agent running?)"
                )
        if event is None:
            continue
        heard = time.monotonic()
        if isinstance(event, PullDoneEvent):
            return event.result
        if isinstance(event, PullErrorEvent):
            raise HostlerError(f"pull of {request.repo} on {event.host} failed: {event.message}")
        if progress is not None:
            progress(event)


def _withdraw(connection: redis.Redis, keys: Keys, host: str, blob: str) -> int:
    """Takes a request the agent has not started off its list; returns how many were removed."""
    return int(connection.lrem(keys.pulls(host), 1, blob))
