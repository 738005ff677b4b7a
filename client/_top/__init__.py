"""hostler: local LLMs served to many clients through Redis queues.

The public API is the client, its errors and the wire schemas; everything else is
private to the package.
"""

from hostler.client import (
    AsyncClient,
    AsyncJobHandle,
    AsyncStream,
    Client,
    ConnectionFailed,
    ContextExceeded,
    HostlerError,
    InvalidRequest,
    JobFailed,
    JobHandle,
    ModelNotFound,
    NoCapacity,
    NotReplicated,
    Piece,
    QueueFull,
    Stream,
    Timeout,
)
from hostler.schemas import (
    ChatMessage,
    CompletionResult,
    EmbeddingResult,
    LoadParams,
    LoadResult,
    ModelInfo,
    Priority,
    SamplingParams,
    Status,
    TokenLogprob,
    UnloadResult,
    Usage,
    WorkerStatus,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncJobHandle",
    "AsyncStream",
    "ChatMessage",
    "Client",
    "CompletionResult",
    "EmbeddingResult",
    "ConnectionFailed",
    "ContextExceeded",
    "HostlerError",
    "InvalidRequest",
    "JobFailed",
    "JobHandle",
    "LoadParams",
    "LoadResult",
    "ModelInfo",
    "ModelNotFound",
    "NoCapacity",
    "NotReplicated",
    "Piece",
    "QueueFull",
    "Priority",
    "SamplingParams",
    "Status",
    "Stream",
    "Timeout",
    "TokenLogprob",
    "UnloadResult",
    "Usage",
    "WorkerStatus",
    "__version__",
]
