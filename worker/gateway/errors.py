"""hostler's errors as HTTP answers in OpenAI's error shape.

Every error the gateway sends, whatever raised it, is
`{"error": {"message", "type", "param", "code"}}`, so OpenAI SDKs raise their own
typed exceptions (BadRequestError, NotFoundError, RateLimitError, ...) with our message.
"""

from __future__ import annotations

import math
from typing import Any

from hostler.client import (
    ConnectionFailed,
    ContextExceeded,
    HostlerError,
    InvalidRequest,
    JobFailed,
    ModelNotFound,
    NoCapacity,
    QueueFull,
    Timeout,
)
from hostler.schemas import ErrorCode, field_errors

INVALID = "invalid_request_error"
SERVER = "server_error"


class ApiError(Exception):
    """An HTTP error answer; raise it anywhere in a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


# Job failures that are the request's fault, and failures worth retrying later.
_BAD_REQUEST_CODES = {
    ErrorCode.NO_CHAT_TEMPLATE,
    ErrorCode.TOOLS_UNSUPPORTED,
    ErrorCode.EMBEDDINGS_UNSUPPORTED,
    ErrorCode.INVALID_JOB,
    ErrorCode.INVALID_REQUEST,
}
# A model whose files do not load is unavailable, not a fault of the gateway (the fuzzer's find).
_UNAVAILABLE_CODES = {ErrorCode.MODEL_CRASHING, ErrorCode.WORKER_DIED, ErrorCode.HOST_DIED, ErrorCode.LOAD_FAILED}


def from_hostler(exc: HostlerError, *, no_capacity_retry_s: int) -> ApiError:
    """The HTTP answer to an error hostler's client raised."""
    message = str(exc)
    if isinstance(exc, ModelNotFound):
        return ApiError(404, message, param="model", code="model_not_found")
    if isinstance(exc, InvalidRequest):
        return ApiError(400, message, code="invalid_request")
    if isinstance(exc, QueueFull):
        return ApiError(429, message, type="rate_limit_error", code="queue_full", retry_after=exc.retry_after)
    if isinstance(exc, Timeout):
        return ApiError(504, message, type="timeout_error", code="timeout")
    if isinstance(exc, ConnectionFailed):
        return ApiError(503, message, type=SERVER, code="redis_unavailable", retry_after=5)
    if isinstance(exc, NoCapacity):
        return ApiError(503, message, type=SERVER, code=exc.code, retry_after=no_capacity_retry_s)
    if isinstance(exc, ContextExceeded):
        # OpenAI's code for the same condition, which tools already look for.
        return ApiError(400, message, param="messages", code="context_length_exceeded")
    if isinstance(exc, JobFailed):
        if exc.code == ErrorCode.EXPIRED:
            return ApiError(504, message, type="timeout_error", code=exc.code)
        if exc.code in _BAD_REQUEST_CODES:
            return ApiError(400, message, code=exc.code)
        if exc.code in _UNAVAILABLE_CODES:
            return ApiError(503, message, type=SERVER, code=exc.code, retry_after=5)
        return ApiError(500, message, type=SERVER, code=exc.code)
    return ApiError(500, message, type=SERVER, code=ErrorCode.INTERNAL)


def describe_validation(errors: list[Any]) -> ApiError:
    """A 400 naming the first invalid field of a request body (pydantic's error list)."""
    found = field_errors(errors)
    first = found[0]
    # pydantic names the member of a union that failed ('stop.list[str]'); the field is enough.
    param = first.field or None
    if first.kind == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {first.message}", code="invalid_json")
    if first.kind == "extra_forbidden":
        return ApiError(400, f"unknown parameter {param!r}", param=param, code="unknown_parameter")
    if first.kind == "missing":
        return ApiError(400, f"missing required parameter {param!r}", param=param, code="missing_parameter")
    what = f"invalid {param}" if param else "invalid request"
    reason = (first.message or "invalid value").removeprefix("Value error, ")
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return ApiError(400, f"{what}: {reason}{more}", param=param, code="invalid_value")
