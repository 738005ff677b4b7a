"""The engine protocols: what the worker needs from a model runtime, and nothing more.

`SlotEngine` is what the worker drives: up to n_slots generations at once, advanced
together one step at a time, so the worker can publish tokens, admit jobs and stop
sequences between steps. `Engine` is the simpler one-generation-at-a-time shape an engine
may implement instead; `engines.serial.SerialSlots` drives it as a one-slot SlotEngine.
Engines raise EngineError subclasses only; the worker turns them into job errors.
Transports never reach into an engine, and an engine never knows about Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hostler.schemas import (
    ChatMessage,
    ErrorCode,
    FinishReason,
    LoadParams,
    Pooling,
    SamplingParams,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolChoice,
)


class EngineError(Exception):
    code: str = ErrorCode.INTERNAL


class LoadFailed(EngineError):
    code = ErrorCode.LOAD_FAILED


class ContextExceeded(EngineError):
    code = ErrorCode.CONTEXT_EXCEEDED


class NoChatTemplate(EngineError):
    code = ErrorCode.NO_CHAT_TEMPLATE


class EmbeddingsUnsupported(EngineError):
    code = ErrorCode.EMBEDDINGS_UNSUPPORTED

    @classmethod
    def on(cls, engine: str) -> EmbeddingsUnsupported:
        return cls(
            f"the {engine} engine does not compute embeddings: hostler embeds with llama.cpp, so only GGUF "
            "models have them; use a GGUF model for /v1/embeddings and client.embed()"
        )


class InvalidInput(EngineError):
    """A request the schema let through but this model cannot take (dimensions, token ids)."""

    code = ErrorCode.INVALID_REQUEST


class ToolsUnsupported(EngineError):
    code = ErrorCode.TOOLS_UNSUPPORTED


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
    def __call__(self, path: Path, params: LoadParams, *, chat_template: str | None) -> Engine | SlotEngine: ...


@dataclass(frozen=True)
class GenerationRequest:
    """One generation a slot engine is asked to start: a completion prompt or chat messages."""

    params: SamplingParams
    prompt: str | None = None
    messages: Sequence[ChatMessage] | None = None
    # A chat's tools, rendered through its template unless tool_choice is none (schemas' ChatJob).
    tools: Sequence[Tool] | None = None
    tool_choice: ToolChoice = "none"
    parallel_tool_calls: bool = True


@dataclass(frozen=True)
class StepOutput:
    """What one step produced for one sequence (counts so far, not deltas)."""

    seq: int  # the handle start() returned
    piece: str  # new text; "" while the prompt is evaluated or while a stop string may be starting
    finish_reason: FinishReason | None  # set in the step the sequence ended
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens found in the KV cache, not evaluated again
    logprobs: tuple[TokenLogprob, ...] = ()  # with params.logprobs: the tokens whose text this piece carries
    tool_calls: tuple[ToolCall, ...] = ()  # a chat with tools: the calls its reply made, in its last output


@dataclass(frozen=True)
class EmbeddingOutput:
    """A finished embedding task: one unit-length vector per input, in input order."""

    vectors: list[list[float]]
    dimensions: int
    pooling: Pooling
    prompt_tokens: int


class EmbeddingTask(Protocol):
    """One job's inputs, embedded a packed batch per step, so that generations go on between steps.

    Its inputs were checked (context, vocabulary, dimensions) when it was made, before any work.
    """

    @property
    def done(self) -> bool: ...

    def step(self) -> None:
        """Embeds the next inputs (one decode)."""
        ...

    def result(self) -> EmbeddingOutput: ...

    def close(self) -> None:
        """Drops the task (finished, failed or abandoned); the engine may free what it held for it."""
        ...


class SlotEngine(Protocol):
    """One loaded model that runs up to n_slots generations together."""

    @property
    def n_ctx(self) -> int:
        """The context each sequence may use."""
        ...

    @property
    def n_slots(self) -> int: ...

    @property
    def free_slots(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def start(self, request: GenerationRequest) -> int:
        """Admits a generation (its limits checked before any work); returns its handle."""
        ...

    def step(self) -> list[StepOutput]:
        """Advances every running generation by one step; empty when none runs."""
        ...

    def cancel(self, seq: int) -> None:
        """Ends one generation now and frees its slot; the others are not disturbed."""
        ...

    def start_embedding(self, inputs: Sequence[str | Sequence[int]], dimensions: int | None) -> EmbeddingTask:
        """Checks inputs (texts or token ids) and returns the task that embeds them.

        Raises ContextExceeded naming the input, InvalidInput, or EmbeddingsUnsupported.
        """
        ...

    def close(self) -> None: ...
