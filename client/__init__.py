"""hostler's Python client library."""

from ._client import Client
from ._errors import (
    ConnectionFailed,
    ContextExceeded,
    HostlerError,
    InvalidRequest,
    JobFailed,
    ModelNotFound,
    NoCapacity,
    Timeout,
)

__all__ = [
    "Client",
    "ConnectionFailed",
    "ContextExceeded",
    "HostlerError",
    "InvalidRequest",
    "JobFailed",
    "ModelNotFound",
    "NoCapacity",
    "Timeout",
]
