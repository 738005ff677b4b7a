"""MLX model folders (config.json, model*.safetensors, tokenizer files) through mlx-lm.

Generation runs mlx-lm's own generate_step with its sampler and logits processors, and
detokenizes with the tokenizer's streaming detokenizer, exactly as mlx_lm.generate does, so
that at temperature 0 the queued text equals the in-process text; when a generation ends,
what counts as a stop, and how text is held back for stop strings are shared with the
llama engine (worker/decoding.py).

How LoadParams apply: n_ctx is the context limit (mlx-lm's cache grows as needed, so the
limit is enforced here, before any work); n_batch is mlx-lm's prefill_step_size; seed is
the model's default seed. n_threads and n_gpu_layers do not apply: MLX picks its own CPU
threads, and on Apple silicon the weights live in memory the GPU shares, all or nothing. Nor
does cache_prompt: the MlxSlots a worker holds (mlx_batch.py) keeps prompt caches across jobs,
within cache_ram_mib.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hostler.schemas import ChatMessage, ErrorCode, LoadParams, SamplingParams, Tool
from hostler.worker.memory.files import MLX_CONFIG, MLX_WEIGHTS

from .chat_render import template_messages, template_tools
from .decoding import context_budget, decode_pieces, refuse_llama_only
from .protocol import EngineError, Generation, LoadFailed, NoChatTemplate, ShouldStop

# llama-cpp-python's default penalty window (Llama(last_n_tokens_size=64)), so a penalty
# means the same on both engines.
PENALTY_WINDOW = 64


class EmptyPrompt(EngineError):
    code = ErrorCode.INVALID_REQUEST


class MlxEngine:
    def __init__(self, path: Path, params: LoadParams, *, chat_template: str | None = None) -> None:
        _check_folder(path)
        # Deferred: the client, and hosts without MLX, must work without it installed.
        import mlx.core as mx
        import mlx_lm

        self._mx: Any = mx
        self._path = path
        tokenizer_config = {"chat_template": chat_template} if chat_template else None
        try:
            # A folder path never reaches the hub: mlx-lm only downloads names that are not paths.
            loaded = mlx_lm.load(str(path), tokenizer_config=tokenizer_config)
        except (ValueError, KeyError, TypeError, AttributeError, OSError, RuntimeError) as exc:
            raise LoadFailed(f"mlx-lm could not load {path.name}: {exc}") from None
        self._model: Any = loaded[0]
        self._tokenizer: Any = loaded[1]
        self._n_ctx = params.n_ctx
        self._prefill_step = params.n_batch
        # The model's default seed (LoadParams.seed); without one every job draws its own.
        self._seed = params.seed

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def count_tokens(self, text: str) -> int:
        return len(self.prompt_tokens(text))

    def complete(self, prompt: str, params: SamplingParams, should_stop: ShouldStop) -> Generation:
        return self._generate(self.prompt_tokens(prompt), params, should_stop)

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams, should_stop: ShouldStop) -> Generation:
        return self._generate(self.chat_tokens(messages), params, should_stop)

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template chats are rendered with (model.yaml's, else the tokenizer's)."""
        template = getattr(self._tokenizer, "chat_template", None)
        return template if isinstance(template, str) else None

    def chat_tokens(self, messages: Sequence[ChatMessage], tools: Sequence[Tool] | None = None) -> list[int]:
        """The prompt tokens of chat messages (and the tools they may call), through the
        tokenizer's chat template."""
        tokenizer = self._tokenizer
        if not tokenizer.has_chat_template:
            raise NoChatTemplate(
                f"model {self._path.name!r} has no chat template in its tokenizer_config.json; use complete() "
                "instead, or set `chat_template:` (a Jinja template) in a model.yaml in its folder"
            )
        rendered = tokenizer.apply_chat_template(
            template_messages(messages),
            tools=template_tools(tools) if tools else None,
            tokenize=False,
            add_generation_prompt=True,
        )
        # The template writes BOS itself where the model wants it, as transformers assumes.
        return list(tokenizer.encode(rendered, add_special_tokens=False))

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
        gc.collect()
        # MLX keeps freed buffers in its own cache for reuse; give them back to the system.
        self._mx.clear_cache()

    def prompt_tokens(self, prompt: str) -> list[int]:
        # Exactly how mlx_lm.stream_generate encodes a text prompt: the tokenizer's special
        # tokens (BOS), unless the prompt already starts with BOS.
        tokenizer = self._tokenizer
        bos = tokenizer.bos_token
        add_special = bos is None or not prompt.startswith(bos)
        return list(tokenizer.encode(prompt, add_special_tokens=add_special))

    # -- internals ----------------------------------------------------------------

    def _generate(self, tokens: list[int], params: SamplingParams, should_stop: ShouldStop) -> Generation:
        refuse_llama_only(params, "MLX")
        if not tokens:
            raise EmptyPrompt(
                f"the prompt is empty and {self._path.name!r} adds no BOS token: there is nothing to continue"
            )
        max_tokens = context_budget(self._path.name, len(tokens), self.n_ctx, params.max_tokens)
        generation = Generation(pieces=iter(()), prompt_tokens=len(tokens))
        generation.pieces = self._pieces(tokens, params, max_tokens, should_stop, generation)
        return generation

    def _pieces(
        self,
        tokens: list[int],
        params: SamplingParams,
        max_tokens: int,
        should_stop: ShouldStop,
        generation: Generation,
    ) -> Iterator[str]:
        from mlx_lm.generate import generate_step, wired_limit
        from mlx_lm.sample_utils import make_sampler

        mx = self._mx
        seed = params.seed if params.seed is not None else self._seed
        mx.random.seed(seed if seed is not None else random.randrange(2**32))
        sampler = make_sampler(temp=params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=params.top_k)
        tokenizer = self._tokenizer
        end_ids = set(tokenizer.eos_token_ids)
        detokenizer = tokenizer.detokenizer
        steps = generate_step(
            mx.array(tokens),
            self._model,
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=logits_processors(params),
            prefill_step_size=self._prefill_step,
        )

        def text_of(token: int) -> str:
            detokenizer.add_token(token)
            return str(detokenizer.last_segment)

        def final_text() -> str:
            detokenizer.finalize()
            return str(detokenizer.last_segment)

        # As stream_generate does: on Metal, keep the weights wired while generating.
        with wired_limit(self._model):
            try:
                yield from decode_pieces(
                    (int(token) for token, _ in steps),
                    is_end=lambda token: token in end_ids,
                    text_of=text_of,
                    final_text=final_text,
                    stops=tuple(params.stop),
                    max_tokens=max_tokens,
                    should_stop=should_stop,
                    generation=generation,
                )
            finally:
                steps.close()


def logits_processors(params: SamplingParams) -> list[Any]:
    from mlx_lm.sample_utils import make_logits_processors

    # A penalty of None (or 0) adds no processor: an unused one still costs a pass over the logits.
    repetition = params.repeat_penalty if params.repeat_penalty != 1.0 else None
    if not (params.presence_penalty or params.frequency_penalty):
        return list(make_logits_processors(repetition_penalty=repetition, repetition_context_size=PENALTY_WINDOW))
    try:
        return list(
            make_logits_processors(
                repetition_penalty=repetition,
                repetition_context_size=PENALTY_WINDOW,
                presence_penalty=params.presence_penalty,
                presence_context_size=PENALTY_WINDOW,
                frequency_penalty=params.frequency_penalty,
                frequency_context_size=PENALTY_WINDOW,
            )
        )
    except TypeError as exc:
        # mlx-lm before presence/frequency penalties: say so instead of silently ignoring them.
        raise EngineError(f"this mlx-lm cannot apply presence or frequency penalties ({exc}); upgrade mlx-lm") from None


def _check_folder(path: Path) -> None:
    # mlx-lm treats a path that does not exist as a Hugging Face repo name and downloads it:
    # a worker must only ever read the folder it was given.
    if not path.is_dir():
        raise LoadFailed(f"{path} is not an MLX model folder (not a directory)")
    if not (path / MLX_CONFIG).is_file():
        raise LoadFailed(f"{path.name} is not an MLX model folder: it has no {MLX_CONFIG}")
    if not any(path.glob(MLX_WEIGHTS)):
        raise LoadFailed(f"{path.name} is not an MLX model folder: it has no {MLX_WEIGHTS} weights")
