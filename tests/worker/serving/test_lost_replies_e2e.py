"""A reply from Redis lost on its way to a worker, right after Redis ran the command.

The worker's take, its claim of the job it took, and its end of that job (which also takes
the next one) each run on the server and then the connection goes: redis-py either sends
the same command again at once, or, with Redis out of reach for longer than its retries
(about 5 s), gives up and the worker tries again later. Either way every job must run, end
once, in the order it was queued, and none may stay behind in a taken list or as started.
A real Redis, and a proxy in this process that loses exactly the reply it is told to. The
outages last OUTAGE_S of real time, so these run with the e2e tests, not with --fast.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from fake_engine import FakeEngine
from hostler import Client
from hostler.client._connection import connect
from hostler.client._rqstore import fetch_job, make_queue, read_outcome
from hostler.schemas import PRIORITIES, Keys
from hostler.worker.control.host_agent import HostAgent
from hostler.worker.models.registry import scan
from hostler.worker.serving.worker import ModelWorker

pytestmark = pytest.mark.e2e

# Longer than redis-py's retries in client/_connection.py (about 5 s): the worker's call raises.
OUTAGE_S = 8.0

Match = Callable[[bytes], bool]


class ReplyCutter:
    """A TCP proxy to Redis that, on cue, loses one reply and then the connection.

    The request that matches is passed on, so Redis runs it; its reply is thrown away, every
    connection through the proxy is dropped, and new ones are refused for `outage_s`.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._listener.getsockname()[1]}/0"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cue: tuple[Match, Match, float] | None = None
        self._down_until = 0.0
        self.fired = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, request: Match, reply: Match, outage_s: float) -> None:
        self._cue = (request, reply, outage_s)

    def close(self) -> None:
        self._listener.close()
        self._drop_all()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._down_until:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self._target)
        except OSError:
            client.close()
            return
        with self._lock:
            self._open |= {client, server}
        suspect = False
        try:
            while True:
                readable, _, _ = select.select([client, server], [], [])
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        return
                    server.sendall(data)
                    cue = self._cue
                    suspect = suspect or (cue is not None and cue[0](data))
                if server in readable:
                    data = server.recv(65536)
                    if not data:
                        return
                    if suspect:
                        suspect = False
                        data += self._rest_of(server)
                        if self._fire(data):
                            return
                    client.sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._open -= {client, server}
            client.close()
            server.close()

    @staticmethod
    def _rest_of(server: socket.socket) -> bytes:
        """The rest of a reply that came in several reads (a pipeline's, a long record)."""
        more = b""
        server.settimeout(0.2)
        try:
            while chunk := server.recv(65536):
                more += chunk
        except TimeoutError:
            pass
        finally:
            server.settimeout(None)
        return more

    def _fire(self, reply: bytes) -> bool:
        with self._lock:
            cue = self._cue
            if cue is None or not cue[1](reply):
                return False
            self._cue = None
            self._down_until = time.monotonic() + cue[2]
        self._drop_all()
        self.fired.set()
        return True

    def _drop_all(self) -> None:
        with self._lock:
            for sock in list(self._open):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def cutter(redis_url: str) -> Iterator[ReplyCutter]:
    parts = urlsplit(redis_url)
    proxy = ReplyCutter((parts.hostname or "127.0.0.1", parts.port or 6379))
    yield proxy
    proxy.close()


def terminal_events(pubsub: redis.client.PubSub) -> dict[str, list[str]]:
    """Every done or error event received so far, by job id."""
    seen: dict[str, list[str]] = {}
    while (message := pubsub.get_message(timeout=0.2)) is not None:
        if message["type"] != "message":
            continue
        event = json.loads(message["data"])
        if event["type"] in ("done", "error"):
            job_id = message["channel"].decode().rsplit(":", 1)[-1]
            seen.setdefault(job_id, []).append(event["type"])
    return seen


@pytest.mark.parametrize("outage_s", [0.0, OUTAGE_S], ids=["replayed", "outage"])
@pytest.mark.parametrize("lost", ["take", "claim", "end"])
def test_a_lost_reply_neither_strands_nor_repeats_a_job(
    lost: str, outage_s: float, cutter: ReplyCutter, redis_url: str, models_dir: Path, connection: redis.Redis
) -> None:
    keys = Keys()
    agent = HostAgent(connection=connection, keys=keys, redis_url=redis_url, models_dir=models_dir, host="unit")
    agent.rescan()
    agent.report()
    client = Client(redis_url, timeout=30)
    worker = ModelWorker(
        connection=connect(cutter.url),
        keys=keys,
        manifest=scan(models_dir).models["tiny"],
        engine_factory=FakeEngine,
        host="unit",
    )
    ids = [f"lost-{lost}-{i}" for i in range(3)]
    pubsub = connection.pubsub()
    pubsub.subscribe(*(keys.channel(job_id) for job_id in ids))
    # A start deadline: a claim sent again must still find the job in time.
    for i, job_id in enumerate(ids):
        client.submit("tiny", f"story {i}", max_tokens=4, start_within=120, job_id=job_id)

    first = ids[0].encode()
    taken_key = keys.taken("tiny", worker.name).encode()
    if lost == "take":
        cutter.arm(
            lambda sent: b"EVALSHA" in sent and taken_key in sent and not (b"HGETALL" in sent or b"PUBLISH" in sent),
            lambda reply: first in reply,
            outage_s,
        )
    elif lost == "claim":
        job_key = f"rq:job:{ids[0]}".encode()
        cutter.arm(lambda sent: b"HGETALL" in sent and job_key in sent, lambda reply: True, outage_s)
    else:
        channel = keys.channel(ids[0]).encode()
        cutter.arm(lambda sent: b"PUBLISH" in sent and channel in sent, lambda reply: True, outage_s)

    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert cutter.fired.wait(10), "the worker never sent the command whose reply the test loses"
        deadline = time.monotonic() + outage_s + 30
        while time.monotonic() < deadline and not all(read_outcome(connection, j) for j in ids):
            time.sleep(0.05)
        time.sleep(0.5)  # room for a second end of any job to arrive
        events = terminal_events(pubsub)

        statuses = {job_id: connection.hget(f"rq:job:{job_id}", "status") for job_id in ids}
        assert statuses == dict.fromkeys(ids, b"finished"), statuses
        results = {job_id: connection.xlen(f"rq:results:{job_id}") for job_id in ids}
        assert results == dict.fromkeys(ids, 1), f"rq results per job: {results}"
        assert events == {job_id: ["done"] for job_id in ids}, events
        jobs = [fetch_job(connection, job_id) for job_id in ids]
        started = [job.started_at for job in jobs if job is not None and job.started_at is not None]
        # The job that was taken first runs first: nothing more is taken while it is held.
        assert len(started) == 3 and started == sorted(started), list(zip(ids, started, strict=False))

        assert [k for k in connection.scan_iter("hostler:taken:*") if connection.llen(k)] == []
        for priority in PRIORITIES:
            queue = make_queue(connection, keys.queue_name("tiny", priority))
            assert queue.started_job_registry.get_job_ids() == [] and connection.llen(queue.key) == 0
        agent.report()
        assert client.complete("tiny", "still serving", max_tokens=3).usage.completion_tokens == 3
        assert thread.is_alive()
    finally:
        worker.stop()
        thread.join(15)
        pubsub.close()
        client.close()
