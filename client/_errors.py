"""The one exception tree of hostler.

HostlerError
 ├── ModelNotFound        unknown model id (raised before anything is enqueued)
 ├── InvalidRequest       a parameter failed validation (also a ValueError)
 ├── Timeout              a wait ran past its timeout (also a TimeoutError)
 ├── ConnectionFailed     Redis could not be reached, or refused the credentials or a command (ACL)
 ├── NotReplicated        the primary took a job, but too few replicas confirmed it in time
 ├── QueueFull            the model's queue is at its bound (nothing was enqueued)
 └── JobFailed            the job ended with an error
      ├── ContextExceeded the prompt does not fit the model's context
      └── NoCapacity      no host has memory for the model (the message says what each has)
"""

from __future__ import annotations

from hostler.schemas import ErrorCode


class HostlerError(Exception):
    """Base of every error hostler raises on purpose."""


class ModelNotFound(HostlerError, LookupError):
    def __init__(self, model: str, available: list[str]) -> None:
        self.model = model
        self.available = available
        known = ", ".join(available) if available else "none (is `hostler up` running against this Redis?)"
        super().__init__(f"model {model!r} not found; models available: {known}")


class InvalidRequest(HostlerError, ValueError):
    """A request or parameter is invalid; the message names the field."""


class Timeout(HostlerError, TimeoutError):
    """A wait exceeded its timeout."""


class ConnectionFailed(HostlerError, ConnectionError):
    """Redis could not be reached, or refused the credentials or a command (ACL).

    A refusal is final: it is never retried as if the server were down.
    """


class NotReplicated(HostlerError):
    """The primary queued the job, but fewer replicas than the URL's wait_replicas confirmed it
    within wait_timeout_ms: it may run, or vanish if the primary fails now. `job_id` names it."""

    def __init__(self, job_id: str, confirmed: int, wanted: int, timeout_ms: int) -> None:
        self.job_id = job_id
        self.confirmed = confirmed
        self.wanted = wanted
        super().__init__(
            f"job {job_id} was queued on the primary, but only {confirmed} of {wanted} replica(s) confirmed it "
            f"within {timeout_ms} ms (wait_replicas in the Redis URL); a failover now could lose it"
        )


class QueueFull(HostlerError):
    """The model's queue holds as many waiting jobs as its bound allows; nothing was enqueued.

    `retry_after` is a hint in seconds: about how long the workers need to make room.
    """

    def __init__(self, model: str, bound: int, length: int, retry_after: float) -> None:
        self.model = model
        self.bound = bound
        self.length = length
        self.retry_after = retry_after
        super().__init__(
            f"queue of model {model!r} is full: {length} jobs waiting, bound {bound}; "
            f"nothing was enqueued, retry after about {retry_after:.0f} s"
        )


class JobFailed(HostlerError):
    """A job ended as failed; `code` is a stable machine-readable reason."""

    def __init__(self, job_id: str, code: str, message: str) -> None:
        self.job_id = job_id
        self.code = code
        self.message = message
        super().__init__(f"job {job_id} failed ({code}): {message}")


class ContextExceeded(JobFailed):
    """The prompt (plus template) is longer than the model's context."""


class NoCapacity(JobFailed):
    """No host could load the model, even after unloading idle ones; the message says how much
    the model needs and what each host has."""


def job_error(job_id: str, code: str, message: str) -> JobFailed:
    """The error a job's failure code raises in the client."""
    if code == ErrorCode.CONTEXT_EXCEEDED:
        return ContextExceeded(job_id, code, message)
    if code == ErrorCode.NO_CAPACITY:
        return NoCapacity(job_id, code, message)
    return JobFailed(job_id, code, message)
