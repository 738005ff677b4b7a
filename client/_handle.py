"""A handle on one submitted job, from the sync client: status, result, stream, cancel."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import redis
from hostler.schemas import JobResult

from . import _reads as reads
from ._core import HandleBase
from ._errors import Timeout
from ._follow import not_finished
from ._pieces import Stream

if TYPE_CHECKING:
    from ._client import Client


class JobHandle(HandleBase["Client"]):
    """A job on a model's queue, found again by its id from any process.

    result() and stream() follow the job as the async handle does: subscribed to its
    channel, with its stored record read first (it may have ended already) and on silence.
    """

    client: Client

    @property
    def connection(self) -> redis.Redis:
        return self.client.connection

    def status(self) -> str:
        """queued, started, finished, failed or canceled ('missing' once its record expired)."""
        return self.client._do(reads.job_status(self.id))

    def result(self, timeout: float = 600.0) -> JobResult:
        """Waits for the job's end; returns its result or raises JobFailed (or Timeout)."""
        with contextlib.closing(self.client._follow(self.id, timeout)) as followed:
            try:
                return followed.result()
            except Timeout:
                raise not_finished(self.id, timeout, self.status()) from None

    def stream(self, timeout: float = 600.0) -> Stream:
        """The job's text as it is made (for a job submitted with stream=True; otherwise the
        whole text once it ends). Pieces published before this call come as one piece."""
        return Stream(self.client._follow(self.id, timeout))

    def cancel(self) -> bool:
        """Cancels the job if it is still waiting; False if a worker has already taken it."""
        return self.client._cancel(self.id, self.model)
