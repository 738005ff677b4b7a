"""The engine protocol: what the worker needs from a model runtime, and nothing more.

Engines raise EngineError subclasses only; the worker turns them into job errors.
Transports never reach into an engine, and an engine never knows about Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hostler.schemas import ChatMessage, ErrorCode, FinishReason, LoadParams, SamplingParams


class EngineError(Exception):
    code: str = ErrorCode.INTERNAL


class LoadFailed(EngineError):
    code = ErrorCode.LOAD_FAILED


class ContextExceeded(EngineError):
    code = ErrorCode.CONTEXT_EXCEEDED


class NoChatTemplate(EngineError):
    code = ErrorCode.NO_CHAT_TEMPLATE


@dataclass
class Generation:
    """The pieces of one generation as they come, then how it ended.

    Iterate it for text pieces; after the iterator is exhausted finish_reason and the
    token counts are final. The pieces joined are exactly the final text.
    """

    pieces: Iterator[str]
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: FinishReason = "length"
    text_parts: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        for piece in self.pieces:
            self.text_parts.append(piece)
            yield piece

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


# Called between tokens; True ends the generation as canceled.
ShouldStop = Callable[[], bool]


class Engine(Protocol):
    """One loaded model."""

    @property
    def n_ctx(self) -> int: ...

    def count_tokens(self, text: str) -> int:
        """Tokens of text as a completion prompt (BOS included where the model adds one)."""
        ...

    def complete(self, prompt: str, params: SamplingParams, should_stop: ShouldStop) -> Generation: ...

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams, should_stop: ShouldStop) -> Generation: ...

    def close(self) -> None: ...


class EngineFactory(Protocol):
    def __call__(self, path: Path, params: LoadParams, *, chat_template: str | None) -> Engine: ...
