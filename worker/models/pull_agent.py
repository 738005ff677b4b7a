"""The host agent's half of `client.pull`: take pull requests from Redis, download, report.

Each request runs in its own thread with the same code as `hostler models pull`, publishing
progress on the pull's channel (at most every PROGRESS_EVERY_S) and keeping the latest event
under the pull's state key. The done event is published by the agent's loop only after it has
rescanned the models directory and heartbeated, so a client that sees it can use the model.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import redis
from hostler.schemas import (
    Keys,
    PullDoneEvent,
    PullErrorEvent,
    PullEvent,
    PullProgressEvent,
    PullRequest,
    PullResult,
)
from pydantic import ValidationError

from .pull import PullProgress, describe_error, plan_pull, pull

log = logging.getLogger("hostler.pull")

PROGRESS_EVERY_S = 0.5
# While a pull runs its state key is refreshed with each event; a finished pull's state stays an hour.
RUNNING_STATE_TTL_S = 30
FINAL_STATE_TTL_S = 3600
MAX_RUNNING = 4


@dataclass
class _Finished:
    request: PullRequest
    event: PullEvent


@dataclass
class PullService:
    connection: redis.Redis
    keys: Keys
    host: str
    models_dir: Path
    _running: dict[str, threading.Thread] = field(default_factory=dict)
    _finished: queue.Queue[_Finished] = field(default_factory=queue.Queue)

    def take(self) -> None:
        """Starts a thread for each waiting request (a few at a time; the rest wait their turn)."""
        for pull_id in [p for p, t in self._running.items() if not t.is_alive()]:
            del self._running[pull_id]
        while len(self._running) < MAX_RUNNING:
            # LPOP without a count answers one value (the stubs allow a list too).
            raw = cast(bytes | None, self.connection.lpop(self.keys.pulls(self.host)))
            if raw is None:
                return
            try:
                request = PullRequest.model_validate_json(raw)
            except ValidationError as exc:
                log.warning("ignoring an invalid pull request: %s", exc.errors()[0]["msg"])
                continue
            name = f"pull-{request.pull_id[:8]}"
            thread = threading.Thread(target=self._run, args=(request,), name=name, daemon=True)
            self._running[request.pull_id] = thread
            thread.start()

    def finished(self) -> list[_Finished]:
        done = []
        while True:
            try:
                done.append(self._finished.get_nowait())
            except queue.Empty:
                return done

    def announce(self, finished: list[_Finished]) -> None:
        """Publishes the end of pulls (call after the host report lists their models)."""
        for item in finished:
            self._publish(item.request.pull_id, item.event, FINAL_STATE_TTL_S)

    def _run(self, request: PullRequest) -> None:
        last = 0.0

        def on_progress(progress: PullProgress) -> None:
            nonlocal last
            now = time.monotonic()
            complete = progress.total is not None and progress.done >= progress.total
            if now - last < PROGRESS_EVERY_S and not complete:
                return
            last = now
            event = PullProgressEvent(
                host=self.host,
                file=progress.file,
                file_done=progress.file_done,
                file_total=progress.file_total,
                done=progress.done,
                total=progress.total,
            )
            self._publish(request.pull_id, event, RUNNING_STATE_TTL_S)

        outcome: PullEvent
        try:
            log.info("pulling %s (pull %s)", request.repo, request.pull_id)
            plan = plan_pull(
                request.repo,
                file=request.file,
                quant=request.quant,
                revision=request.revision,
                model_id=request.model_id,
            )
            pulled = pull(plan, self.models_dir, progress=on_progress)
            result = PullResult(
                model_id=pulled.model_id,
                host=self.host,
                path=str(pulled.folder),
                files=list(pulled.files),
                size_bytes=pulled.size_bytes,
                already=pulled.already,
            )
            outcome = PullDoneEvent(result=result)
            log.info("pulled %s as %s", request.repo, pulled.model_id)
        except Exception as exc:  # noqa: BLE001 - whatever stops a pull is told to the client, not lost in a thread
            log.warning("pull of %s failed: %s", request.repo, describe_error(exc))
            outcome = PullErrorEvent(host=self.host, message=describe_error(exc))
        self._finished.put(_Finished(request, outcome))
        try:
            self.connection.rpush(self.keys.wake(self.host), "pull")  # the agent announces it now
        except redis.RedisError:
            pass  # it looks again within half a second anyway

    def _publish(self, pull_id: str, event: PullEvent, ttl: int) -> None:
        blob = event.model_dump_json()
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.pull_state(pull_id), blob, ex=ttl)
                pipe.publish(self.keys.pull_channel(pull_id), blob)
                pipe.execute()
        except redis.RedisError as exc:
            # A progress message lost to a Redis blip is harmless: the next one, or the state key, follows.
            log.warning("could not publish pull %s progress: %s", pull_id, exc)
