"""GGUF models as the worker drives them: BatchedLlama behind the SlotEngine protocol.

BatchedLlama takes prompt tokens; this turns a job's prompt or chat messages into them
(exactly as llama-cpp-python builds them) and hands its step outputs on unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hostler.schemas import LoadParams

from .llama_batch import BatchedLlama, SequenceRequest
from .llama_embed import LlamaEmbedder, LlamaEmbeddingTask
from .protocol import EmbeddingTask, GenerationRequest, StepOutput
from .tool_replies import ToolReplies, wants_tools


class LlamaSlots:
    def __init__(self, path: Path, params: LoadParams, *, chat_template: str | None = None) -> None:
        self._llama = BatchedLlama(path, params, chat_template=chat_template)
        self._tools = ToolReplies(path.stem)
        self._embedder: LlamaEmbedder | None = None

    @property
    def n_ctx(self) -> int:
        return self._llama.n_ctx

    @property
    def n_slots(self) -> int:
        return self._llama.n_slots

    @property
    def free_slots(self) -> int:
        return self._llama.free_slots

    def count_tokens(self, text: str) -> int:
        return self._llama.count_tokens(text)

    def start(self, request: GenerationRequest) -> int:
        params, scanner = request.params, None
        if request.messages is not None:
            params, scanner = self._tools.prepare(request, self._llama.chat_template)
            tools = request.tools if wants_tools(request) else None
            tokens, stops = self._llama.chat_tokens(request.messages, tools)
        else:
            tokens, stops = self._llama.prompt_tokens(request.prompt or ""), ()
        handle = self._llama.submit(SequenceRequest(tokens=tokens, params=params, extra_stops=stops))
        self._tools.track(handle, scanner)
        return handle

    def step(self) -> list[StepOutput]:
        return self._tools.outputs(self._llama.step())

    def cancel(self, seq: int) -> None:
        self._llama.cancel(seq)
        self._tools.forget(seq)

    def start_embedding(self, inputs: Sequence[str | Sequence[int]], dimensions: int | None) -> EmbeddingTask:
        if self._embedder is None:
            self._embedder = self._llama.embedder()
        return LlamaEmbeddingTask(self._embedder, inputs, dimensions)

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
        self._llama.close()
