"""GGUF models through llama-cpp-python.

Generation runs on Llama.generate() with the same prompt tokens and sampler settings as
Llama.create_completion(), so that at temperature 0 the queued text equals the
in-process text token for token; detokenizing and stop strings are done here in
linear time (create_completion re-detokenizes the whole completion every token).
"""

from __future__ import annotations

import codecs
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hostler.schemas import ChatMessage, LoadParams, SamplingParams
from hostler.worker.memory.files import GGUF_MAGIC

from .decoding import context_budget, decode_pieces
from .llama_cpu import safe_llama_defaults
from .protocol import Generation, LoadFailed, NoChatTemplate, ShouldStop


class LlamaEngine:
    def __init__(self, path: Path, params: LoadParams, *, chat_template: str | None = None) -> None:
        import llama_cpp  # deferred: the client must work without llama.cpp installed

        self._lib = llama_cpp
        _check_gguf_header(path)
        kwargs: dict[str, Any] = {
            "model_path": str(path),
            "n_ctx": params.n_ctx,
            "n_batch": min(params.n_batch, params.n_ctx),
            "n_gpu_layers": params.n_gpu_layers,
            "verbose": False,
        }
        # llama.cpp counts the machine's cores, not the ones this process may use: a worker
        # pinned to one core (taskset, a cgroup) would run prompt batches on threads that
        # fight over it. Threads follow the CPU affinity unless n_threads says otherwise.
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        kwargs["n_threads_batch"] = params.n_threads or usable
        kwargs["n_threads"] = params.n_threads or max(1, usable // 2)
        if params.seed is not None:
            kwargs["seed"] = params.seed
        try:
            with safe_llama_defaults():
                self._llm = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise LoadFailed(f"llama.cpp could not load {path.name}: {exc}") from None
        self._path = path
        # The model's default seed (LoadParams.seed); without one every job draws its own.
        self._seed = params.seed
        self._cache_prompt = params.cache_prompt
        self._template_source = chat_template or self._llm.metadata.get("tokenizer.chat_template")
        self._formatter: Any = None

    @property
    def n_ctx(self) -> int:
        # llama.cpp may round the context up (64 becomes 256), but llama-cpp-python sizes
        # its token buffer by the n_ctx it was given: the smaller one is the real limit.
        return min(int(self._llm.n_ctx()), len(self._llm.input_ids))

    def count_tokens(self, text: str) -> int:
        return len(self._prompt_tokens(text))

    def complete(self, prompt: str, params: SamplingParams, should_stop: ShouldStop) -> Generation:
        return self._generate(self._prompt_tokens(prompt), params, (), should_stop)

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams, should_stop: ShouldStop) -> Generation:
        formatter = self._chat_formatter()
        rendered = formatter(messages=[m.model_dump() for m in messages])
        # The template writes BOS itself where the model wants it, as llama-cpp-python assumes.
        tokens = self._llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=False, special=True)
        stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop]
        return self._generate(tokens, params, tuple(s for s in stops if s), should_stop)

    def close(self) -> None:
        self._llm.close()

    # -- internals ----------------------------------------------------------------

    def _prompt_tokens(self, prompt: str) -> list[int]:
        # Exactly how create_completion builds a text prompt, so usage matches in-process.
        model = self._llm._model
        bos = [self._llm.token_bos()] if model.add_bos_token() and self._llm.token_bos() != -1 else []
        body = self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []
        return bos + body

    def _chat_formatter(self) -> Any:
        if self._template_source is None:
            raise NoChatTemplate(
                f"model {self._path.stem!r} has no chat template in its GGUF metadata; use complete() "
                "instead, or set `chat_template:` (a Jinja template) in a model.yaml beside the file"
            )
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            model = self._llm._model
            self._formatter = Jinja2ChatFormatter(
                template=self._template_source,
                eos_token=model.token_get_text(self._llm.token_eos()),
                bos_token=model.token_get_text(self._llm.token_bos()),
            )
        return self._formatter

    def _generate(
        self, tokens: list[int], params: SamplingParams, extra_stops: tuple[str, ...], should_stop: ShouldStop
    ) -> Generation:
        max_tokens = context_budget(self._path.stem, len(tokens), self.n_ctx, params.max_tokens)
        generation = Generation(pieces=iter(()), prompt_tokens=len(tokens))
        generation.pieces = self._pieces(tokens, params, max_tokens, extra_stops, should_stop, generation)
        return generation

    def _pieces(
        self,
        tokens: list[int],
        params: SamplingParams,
        max_tokens: int,
        extra_stops: tuple[str, ...],
        should_stop: ShouldStop,
        generation: Generation,
    ) -> Iterator[str]:
        llm = self._llm
        # Start every job from an empty context unless the model was loaded with cache_prompt.
        # llama-cpp-python would otherwise reuse a cached prompt prefix, and evaluating the
        # rest in a different batch shape changes the logits slightly: a job's text would
        # depend on the job before it.
        if not self._cache_prompt:
            llm.reset()
        seed = params.seed if params.seed is not None else self._seed
        llm.set_seed(seed if seed is not None else random.randrange(2**32))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        vocab = llm._model.vocab
        tokens_iter = llm.generate(
            tokens,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            temp=params.temperature,
            repeat_penalty=params.repeat_penalty,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
        )
        try:
            yield from decode_pieces(
                tokens_iter,
                is_end=lambda token: bool(self._lib.llama_vocab_is_eog(vocab, token)),
                text_of=lambda token: decoder.decode(llm.detokenize([token])),
                final_text=lambda: decoder.decode(b"", final=True),
                stops=tuple(params.stop) + extra_stops,
                max_tokens=max_tokens,
                should_stop=should_stop,
                generation=generation,
            )
        finally:
            tokens_iter.close()


def _check_gguf_header(path: Path) -> None:
    # llama.cpp aborts the whole process on some malformed files; refuse the obvious ones first.
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise LoadFailed(f"cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise LoadFailed(f"{path.name} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
