"""hostler's Python client library."""

from ._async import AsyncClient
from ._async_handle import AsyncJobHandle, AsyncStream
from ._client import Client
from ._errors import (
    ConnectionFailed,
    ContextExceeded,
    HostlerError,
    InvalidRequest,
    JobFailed,
    ModelNotFound,
    NoCapacity,
    NotReplicated,
    QueueFull,
    Timeout,
)
from ._handle import JobHandle
from ._pieces import Piece, Stream

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
    "NotReplicated",
    "Piece",
    "QueueFull",
    "Stream",
    "Timeout",
]
