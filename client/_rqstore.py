"""Reading and writing hostler jobs in rq's own records, always with rq's JSON serializer.

Shared by the client and the worker so that both agree on what a job record holds.
Nothing here ever uses pickle: rq's default serializer is never passed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis
from hostler.schemas import RESULT_ADAPTER, JobResult
from rq.job import Job as RqJob
from rq.job import JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer

# A finished job's record and result stay this long for a late reader (seconds).
RESULT_TTL = 3600
FAILURE_TTL = 24 * 3600
# A queued job nobody took expires after this; the janitor issue tightens it per job.
QUEUED_TTL = 24 * 3600


def make_queue(connection: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer, default_timeout=-1)


def fetch_job(connection: redis.Redis, job_id: str) -> RqJob | None:
    try:
        return RqJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except Exception:  # noqa: BLE001 - a missing or unreadable record is the same to a reader
        return None


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended, as stored in rq: a result, or an error code and message."""

    status: str
    result: JobResult | None = None
    code: str | None = None
    message: str | None = None


def encode_failure(code: str, message: str) -> str:
    """rq keeps a failed job's reason as a string; ours is JSON so a client can read the code."""
    return json.dumps({"code": code, "message": message})


def decode_failure(exc_string: str | None) -> tuple[str, str]:
    if not exc_string:
        return "internal", "the job failed without a reason"
    try:
        data: Any = json.loads(exc_string)
        return str(data["code"]), str(data["message"])
    except (ValueError, KeyError, TypeError):
        # Written by something other than a hostler worker (rq's own traceback text).
        return "internal", exc_string.strip().splitlines()[-1] if exc_string.strip() else exc_string


def read_outcome(connection: redis.Redis, job_id: str) -> JobOutcome | None:
    """The stored end of a job, or None while it is still queued or running."""
    job = fetch_job(connection, job_id)
    if job is None:
        return JobOutcome(status="missing", code="job_missing", message=f"job {job_id} no longer exists")
    status = job.get_status(refresh=False)
    if status == JobStatus.FINISHED:
        latest = job.latest_result()
        if latest is None or latest.return_value is None:
            return JobOutcome(status=str(status), code="internal", message="finished without a stored result")
        return JobOutcome(status=str(status), result=RESULT_ADAPTER.validate_python(latest.return_value))
    if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
        latest = job.latest_result()
        code, message = decode_failure(latest.exc_string if latest is not None else None)
        if status == JobStatus.CANCELED:
            code, message = "canceled", "the job was canceled"
        return JobOutcome(status=str(status), code=code, message=message)
    return None
