"""A fake engine for unit tests of worker logic only; end-to-end tests never use it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from hostler.schemas import ChatMessage, LoadParams, SamplingParams
from hostler.worker.engines.protocol import ContextExceeded, Generation, LoadFailed, ShouldStop


class FakeEngine:
    loads = 0

    def __init__(self, path: Path, params: LoadParams, *, chat_template: str | None = None) -> None:
        if not path.read_bytes().startswith(b"GGUF"):
            raise LoadFailed(f"{path.name} is not a GGUF file")
        FakeEngine.loads += 1
        self.params = params

    @property
    def n_ctx(self) -> int:
        return self.params.n_ctx

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1

    def complete(self, prompt: str, params: SamplingParams, should_stop: ShouldStop) -> Generation:
        n = self.count_tokens(prompt)
        if n >= self.n_ctx:
            raise ContextExceeded(f"the prompt is {n} tokens but the context is {self.n_ctx} tokens")
        generation = Generation(pieces=iter(()), prompt_tokens=n)
        generation.pieces = self._pieces(params, should_stop, generation)
        return generation

    def _pieces(self, params: SamplingParams, should_stop: ShouldStop, generation: Generation) -> Iterator[str]:
        for i in range(params.max_tokens):
            if should_stop():
                generation.finish_reason = "canceled"
                return
            generation.completion_tokens = i + 1
            yield f" w{i}"

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams, should_stop: ShouldStop) -> Generation:
        return self.complete(" ".join(m.content or "" for m in messages), params, should_stop)

    def close(self) -> None:
        pass
