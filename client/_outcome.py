"""How a job ended, as rq stores it: a result, or a failure reason hostler writes as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hostler.schemas import PRIORITIES, JobResult, Keys
from rq.queue import Queue


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


def queue_key(name: str) -> str:
    """The Redis list rq keeps a queue's waiting job ids in."""
    return f"{Queue.redis_queue_namespace_prefix}{name}"


def queue_keys(keys: Keys, model: str) -> list[str]:
    """A model's queue lists in the order a worker takes from them: interactive, then batch."""
    return [queue_key(keys.queue_name(model, priority)) for priority in PRIORITIES]
