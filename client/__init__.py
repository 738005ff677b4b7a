"""hostler's Python client library."""

from ._async import AsyncClient, AsyncJobHandle, AsyncStream
from ._client import Client
from ._errors import (
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
from ._handle import JobHandle

__all__ = [
    "AsyncClient",
    "AsyncJobHandle",
    "AsyncStream",
    "Client",
    "ConnectionFailed",
    "ContextExceeded",
    "HostlerError",
    "InvalidRequest",
    "JobFailed",
    "JobHandle",
    "ModelNotFound",
    "NoCapacity",
    "QueueFull",
    "Timeout",
]
