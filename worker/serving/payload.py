"""What a queue entry must be before a worker runs it: a hostler job of this model, as JSON.

Anyone with Redis access can write to a queue, so every claimed record is checked again:
its size (inflated at most MAX_REQUEST_BYTES + 1), JSON decoded with rq's JSON serializer
only (never pickle), a `hostler.job.<kind>` function name, keyword arguments that validate
against the job schema, and this worker's model.
"""

from __future__ import annotations

import zlib

from hostler.schemas import JOB_ADAPTER, MAX_REQUEST_BYTES, RQ_FUNC_PREFIX, Job, field_errors
from pydantic import ValidationError

from .jobstore import Claimed, describe_payload


class InvalidJob(Exception):
    """A queue entry that is not a hostler job; it fails, it is never executed."""


def check_size(raw: dict[bytes, bytes]) -> None:
    """Refuses a payload over MAX_REQUEST_BYTES before anything decodes it (zip bombs included)."""
    data = raw.get(b"data", b"")
    if len(data) > MAX_REQUEST_BYTES:
        raise InvalidJob(f"request is {len(data)} bytes; the limit is {MAX_REQUEST_BYTES} bytes")
    try:
        inflated = zlib.decompressobj().decompress(data, MAX_REQUEST_BYTES + 1)
    except zlib.error:
        return  # stored uncompressed (rq accepts both); its length was checked above
    if len(inflated) > MAX_REQUEST_BYTES:
        raise InvalidJob(f"request is over {MAX_REQUEST_BYTES} bytes once decompressed; that is the limit")


def parse_job(claimed: Claimed, model: str) -> Job:
    if not claimed.raw:
        raise InvalidJob(f"job {claimed.job.id} has no record (it expired or was deleted)")
    check_size(claimed.raw)
    try:
        claimed.job.restore(claimed.raw)
        func_name = claimed.job.func_name
        args, kwargs = claimed.job.args, claimed.job.kwargs
    except Exception as exc:  # noqa: BLE001 - any undecodable payload is the same error
        raise InvalidJob(
            f"job payload is not JSON of a hostler job ({type(exc).__name__}); "
            f"hostler never unpickles payloads (record fields: {describe_payload(claimed.raw)})"
        ) from None
    if not isinstance(func_name, str) or not func_name.startswith(RQ_FUNC_PREFIX):
        raise InvalidJob(f"unknown job kind {str(func_name)[:100]!r}: hostler workers run only hostler jobs")
    if args or not isinstance(kwargs, dict):
        raise InvalidJob("job payload must be keyword arguments only")
    try:
        job = JOB_ADAPTER.validate_python(kwargs)
    except ValidationError as exc:
        first = field_errors(exc)[0]
        raise InvalidJob(f"invalid job field {first.path or 'payload'}: {first.message}") from None
    if func_name != RQ_FUNC_PREFIX + job.kind:
        raise InvalidJob(f"job kind {job.kind!r} does not match its function {func_name!r}")
    if job.model != model:
        raise InvalidJob(f"job for model {job.model!r} is on the queue of {model!r}")
    return job
