"""GGUF models through llama-cpp-python.

Generation runs on Llama.generate() with the same prompt tokens and sampler settings as
Llama.create_completion(), so that at temperature 0 the queued text equals the
in-process text token for token; detokenizing and stop strings are done here in
linear time (create_completion re-detokenizes the whole completion every token).
"""

from __future__ import annotations

import codecs
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hostler.schemas import ChatMessage, LoadParams, SamplingParams

from .engine import ContextExceeded, Generation, LoadFailed, NoChatTemplate, ShouldStop
from .stops import StopScanner

GGUF_MAGIC = b"GGUF"


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
        if params.n_threads is not None:
            kwargs["n_threads"] = params.n_threads
        if params.seed is not None:
            kwargs["seed"] = params.seed
        try:
            self._llm = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise LoadFailed(f"llama.cpp could not load {path.name}: {exc}") from None
        self._path = path
        # The model's default seed (LoadParams.seed); without one every job draws its own.
        self._seed = params.seed
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
        n_ctx = self.n_ctx
        if len(tokens) >= n_ctx:
            raise ContextExceeded(
                f"the prompt is {len(tokens)} tokens but the context of {self._path.stem!r} is {n_ctx} "
                "tokens (n_ctx); shorten it or load the model with a larger n_ctx"
            )
        max_tokens = min(params.max_tokens, n_ctx - len(tokens))
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
        # Start every job from an empty context. llama-cpp-python would otherwise reuse a
        # cached prompt prefix, and evaluating the rest in a different batch shape changes
        # the logits slightly: a job's text would depend on the job before it.
        llm.reset()
        seed = params.seed if params.seed is not None else self._seed
        llm.set_seed(seed if seed is not None else random.randrange(2**32))
        scanner = StopScanner(tuple(params.stop) + extra_stops)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        vocab = llm._model.vocab
        count = 0
        generation.finish_reason = "length"
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
            for token in tokens_iter:
                if self._lib.llama_vocab_is_eog(vocab, token):
                    generation.finish_reason = "stop"
                    break
                count += 1
                generation.completion_tokens = count
                out = scanner.feed(decoder.decode(llm.detokenize([token])))
                if out:
                    yield out
                if scanner.stopped:
                    generation.finish_reason = "stop"
                    break
                if count >= max_tokens:
                    break
                if should_stop():
                    generation.finish_reason = "canceled"
                    break
        finally:
            tokens_iter.close()
        tail = scanner.feed(decoder.decode(b"", final=True))
        tail += scanner.flush()
        if tail:
            yield tail


def _check_gguf_header(path: Path) -> None:
    # llama.cpp aborts the whole process on some malformed files; refuse the obvious ones first.
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise LoadFailed(f"cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise LoadFailed(f"{path.name} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
