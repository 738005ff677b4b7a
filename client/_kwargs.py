"""The keyword arguments of the client methods, typed so that a misspelt one fails mypy.

SamplingKwargs and LoadParamsKwargs restate SamplingParams' and LoadParams' fields, because
a TypedDict cannot be derived from a model at type-check time; tests/client/test_client_core.py keeps
them equal (the one widening: `stop` also takes a bare string, as SamplingParams does).
Pydantic checks the values at run time either way. Each method's options are written here
once, for Client and AsyncClient alike.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

from hostler.schemas import ChatMessage, NamedToolChoice, Priority, PullProgressEvent, Tool

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - pydantic installs typing_extensions
    from typing_extensions import Unpack

__all__ = [
    "TOOL_OPTIONS",
    "ChatKwargs",
    "ChatOptions",
    "CompleteKwargs",
    "CompleteOptions",
    "EmbedKwargs",
    "LoadKwargs",
    "LoadOptions",
    "LoadParamsKwargs",
    "MapKwargs",
    "MapOptions",
    "PullKwargs",
    "QueueOptions",
    "SamplingKwargs",
    "StreamKwargs",
    "StreamOptions",
    "SubmitKwargs",
    "SubmitOptions",
    "ToolOptions",
    "Unpack",
    "WaitWhenFull",
    "split",
]

# False: raise QueueFull at once; True: wait for room as long as the call may take; a number:
# wait at most that many seconds. Waits follow QueueFull.retry_after (at most 5 s at a time).
WaitWhenFull = bool | float


class SamplingKwargs(TypedDict, total=False):
    """SamplingParams' fields; unset ones keep SamplingParams' defaults."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    stop: list[str] | str
    seed: int | None
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    grammar: str | None
    json_schema: dict[str, Any] | None
    logprobs: int | None


class LoadParamsKwargs(TypedDict, total=False):
    """LoadParams' fields; unset ones keep LoadParams' defaults."""

    n_ctx: int
    n_batch: int
    n_threads: int | None
    n_gpu_layers: int
    seed: int | None
    cache_prompt: bool
    n_parallel: int
    cache_ram_mib: int | None
    flash_attn: bool | None


class QueueOptions(TypedDict, total=False):
    """How a job is queued. priority: 'interactive' jobs are always taken before 'batch' ones.
    start_within: a job not started by then expires (seconds, or '10m'). job_timeout: its
    longest generation time. wait_when_full: see WaitWhenFull."""

    priority: Priority
    start_within: float | str | None
    job_timeout: float | str | None
    wait_when_full: WaitWhenFull


class StreamOptions(QueueOptions, total=False):
    """timeout: the longest wait for the result in seconds (None: the client's timeout)."""

    timeout: float | None


class CompleteOptions(StreamOptions, total=False):
    """retries: times the job is queued again if its worker dies while running it."""

    retries: int


class ToolOptions(TypedDict, total=False):
    """A chat's tools, in OpenAI's shapes. tools: the functions the model may call (dicts or
    hostler.schemas.Tool). tool_choice: 'none', 'auto' (the default with tools), 'required', or
    {'type': 'function', 'function': {'name': ...}}; the last two constrain the reply to a call.
    parallel_tool_calls: whether one reply may hold several calls (default True)."""

    tools: Sequence[Mapping[str, Any] | Tool] | None
    tool_choice: str | Mapping[str, Any] | NamedToolChoice | None
    parallel_tool_calls: bool


# The ChatJob fields ToolOptions sets.
TOOL_OPTIONS = ("tools", "tool_choice", "parallel_tool_calls")


class ChatOptions(StreamOptions, ToolOptions, total=False):
    """chat()'s options: a stream's, and the tools."""


class SubmitOptions(QueueOptions, ToolOptions, total=False):
    """messages: a chat instead of a prompt (tools go with it). retries: as complete()'s. stream:
    publish the pieces as they are made, for handle.stream(). job_id: pick the id yourself."""

    messages: Sequence[Mapping[str, Any] | ChatMessage] | None
    retries: int
    stream: bool
    job_id: str | None


class MapOptions(TypedDict, total=False):
    """map()'s own options; see Client.map()."""

    max_in_flight: int
    priority: Priority
    job_timeout: float | str | None
    retries: int
    timeout: float | None
    return_exceptions: bool
    on_progress: Callable[[int, int | None], None] | None
    progress: bool


class EmbedKwargs(TypedDict, total=False):
    """embed()'s keywords: how the job is queued and how long to wait for it (see QueueOptions,
    StreamOptions); retries as complete()'s."""

    priority: Priority
    start_within: float | str | None
    wait_when_full: WaitWhenFull
    timeout: float | None
    retries: int


class LoadOptions(TypedDict, total=False):
    """replicas: workers to keep, each on its own host. keep_alive: idle time before unload
    (seconds or '5m', '1h'; -1 never). pinned: never evicted for another model."""

    replicas: int
    keep_alive: float | str
    pinned: bool
    timeout: float | None


class StreamKwargs(SamplingKwargs, StreamOptions, total=False):
    """stream()'s keywords."""


class ChatKwargs(SamplingKwargs, ChatOptions, total=False):
    """chat()'s keywords."""


class CompleteKwargs(SamplingKwargs, CompleteOptions, total=False):
    """complete()'s keywords."""


class SubmitKwargs(SamplingKwargs, SubmitOptions, total=False):
    """submit()'s keywords."""


class MapKwargs(SamplingKwargs, MapOptions, total=False):
    """map()'s keywords."""


class LoadKwargs(LoadParamsKwargs, LoadOptions, total=False):
    """load()'s keywords."""


class PullKwargs(TypedDict, total=False):
    """pull()'s keywords; see Client.pull()."""

    file: str | None
    quant: str | None
    revision: str
    model_id: str | None
    host: str | None
    progress: Callable[[PullProgressEvent], None] | None
    timeout: float | None


def split(kwargs: Mapping[str, Any], options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keywords the TypedDict `options` declares, and the rest: the parameters pydantic checks.

    An unknown keyword lands in the rest, where SamplingParams or LoadParams refuse it by name.
    """
    names: frozenset[str] = options.__optional_keys__ | options.__required_keys__
    return {k: v for k, v in kwargs.items() if k in names}, {k: v for k, v in kwargs.items() if k not in names}
