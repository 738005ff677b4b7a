"""A one-generation-at-a-time Engine driven as a one-slot SlotEngine.

Engines without a batched decode loop (mlx-lm builds without batch generation, the fake
engine of the worker's unit tests) keep the simple `Engine` shape; the worker drives every
engine the same way through this. Each step advances the generation by one text piece.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hostler.schemas import FinishReason

from .decoding import refuse_llama_only
from .protocol import (
    EmbeddingsUnsupported,
    EmbeddingTask,
    Engine,
    Generation,
    GenerationRequest,
    SlotEngine,
    StepOutput,
)
from .tool_replies import refuse_tools


@dataclass
class _Running:
    seq: int
    generation: Generation
    pieces: Iterator[str]


class SerialSlots:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._running: _Running | None = None
        self._next_seq = 0

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    @property
    def n_slots(self) -> int:
        return 1

    @property
    def free_slots(self) -> int:
        return 0 if self._running is not None else 1

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def start(self, request: GenerationRequest) -> int:
        if self._running is not None:
            raise RuntimeError("the one slot is busy")
        refuse_llama_only(request.params, _engine_name(self.engine))
        # The worker stops a sequence with cancel() between steps, so the engine never needs to ask.
        if request.messages is not None:
            refuse_tools(request, type(self.engine).__name__)
            generation = self.engine.chat(request.messages, request.params, lambda: False)
        else:
            generation = self.engine.complete(request.prompt or "", request.params, lambda: False)
        self._next_seq += 1
        self._running = _Running(self._next_seq, generation, iter(generation))
        return self._next_seq

    def step(self) -> list[StepOutput]:
        running = self._running
        if running is None:
            return []
        generation = running.generation
        try:
            piece = next(running.pieces)
        except StopIteration:
            self._running = None
            return [self._output(running, "", generation.finish_reason)]
        return [self._output(running, piece, None)]

    @staticmethod
    def _output(running: _Running, piece: str, finish: FinishReason | None) -> StepOutput:
        generation = running.generation
        return StepOutput(
            seq=running.seq,
            piece=piece,
            finish_reason=finish,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
        )

    def cancel(self, seq: int) -> None:
        running = self._running
        if running is not None and running.seq == seq:
            self._running = None
            close = getattr(running.pieces, "close", None)
            if close is not None:
                close()

    def start_embedding(self, inputs: Sequence[str | Sequence[int]], dimensions: int | None) -> EmbeddingTask:
        engine = type(self.engine).__name__
        raise EmbeddingsUnsupported.on("MLX" if engine == "MlxEngine" else engine)

    def close(self) -> None:
        if self._running is not None:
            self.cancel(self._running.seq)
        self.engine.close()


def as_slots(engine: Engine | SlotEngine) -> SlotEngine:
    """The engine as the worker drives it: itself if it batches, else through SerialSlots."""
    if isinstance(engine, SerialSlots) or hasattr(engine, "step"):
        return engine  # type: ignore[return-value]
    return SerialSlots(engine)


def _engine_name(engine: Engine) -> str:
    return "MLX" if type(engine).__name__ == "MlxEngine" else type(engine).__name__
