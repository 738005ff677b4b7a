"""A worker's heartbeat: its report, its liveness keys and the leases of its jobs, every 2 s.

One pipelined round trip writes the report (which `hostler status`, the controller and the
janitor read), the model's alive key, rq's worker heartbeat, and the hold on each job in
flight. A job whose hold comes back refused was taken from this worker while it was frozen
past the report's TTL (SIGSTOP, a stalled VM): the janitor ended or requeued it meanwhile,
so the worker marks it lost and stops generating for it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import redis
from hostler.client._errors import ConnectionFailed
from hostler.schemas import Keys, WorkerReport
from rq.worker import Worker as RqWorker

from .jobstore import Claimed, JobStore

log = logging.getLogger("hostler.worker")

HEARTBEAT_S = 2.0
REPORT_TTL_S = 10


class Heartbeat:
    """Writes one worker's report and holds its jobs, now (`beat`) or every HEARTBEAT_S (`start`)."""

    def __init__(
        self,
        connection: redis.Redis,
        keys: Keys,
        model: str,
        rq_worker: RqWorker,
        store: JobStore,
        report: Callable[[], WorkerReport],
        in_flight: Callable[[], list[Claimed]],
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.model = model
        self.rq_worker = rq_worker
        self.store = store
        self._report = report
        self._in_flight = in_flight
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        report = self._report()
        in_flight = self._in_flight()
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.worker(report.name), report.model_dump_json(), ex=REPORT_TTL_S)
            pipe.sadd(self.keys.workers, report.name)
            pipe.set(self.keys.alive(self.model), report.name, ex=REPORT_TTL_S)
            self.rq_worker.heartbeat(timeout=REPORT_TTL_S * 6, pipeline=pipe)
            # rq's worker state follows the heartbeat, not every job: two commands saved per job.
            self.rq_worker.set_state("busy" if in_flight else "idle", pipeline=pipe)
            for claimed in in_flight:
                self.store.holds(claimed, pipe)
            replies = pipe.execute()
        held = replies[len(replies) - len(in_flight) :] if in_flight else []
        for claimed, reply in zip(in_flight, held, strict=True):
            if reply is None and not (claimed.lost or claimed.ending):
                # Generating on would only be thrown away: the job is someone else's now.
                log.warning(
                    "job %s was taken from %s while it was not heartbeating; dropping it", claimed.job.id, report.name
                )
                claimed.lost = True

    def start(self, graceful: threading.Event, busy: Callable[[], bool], parent_pid: int | None) -> None:
        """Beats in a thread until `graceful` is set and nothing is `busy` any more."""
        self._thread = threading.Thread(
            target=self._loop, args=(graceful, busy, parent_pid), name="heartbeat", daemon=True
        )
        self._thread.start()

    def _loop(self, graceful: threading.Event, busy: Callable[[], bool], parent_pid: int | None) -> None:
        while not graceful.wait(HEARTBEAT_S) or busy():
            if graceful.is_set():
                # Finishing the jobs in flight before exiting: keep them (and this worker) alive.
                time.sleep(HEARTBEAT_S)
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("host agent %d is gone; finishing the jobs in flight and exiting", parent_pid)
                graceful.set()
            try:
                self.beat()
            except (redis.RedisError, ConnectionFailed) as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:  # noqa: BLE001 - the heartbeat thread must outlive surprises
                log.exception("heartbeat crashed")
