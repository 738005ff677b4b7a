"""MLX model folders as the worker drives them: mlx-lm's BatchGenerator behind the SlotEngine protocol.

Up to n_slots (LoadParams.n_parallel) generations decode together: each step is one call of
BatchGenerator.next(), which decodes the next token of every generating sequence in one forward
pass and then evaluates a chunk (n_batch tokens) of each prompt still pending, so a long new
prompt never holds the others' tokens for more than one chunk.

What is the serial MlxEngine's, reused rather than restated: loading and the folder checks,
how a prompt or chat messages become tokens (`prompt_tokens`, `chat_tokens`), the penalties
(`logits_processors`, one list per sequence). What ends a generation is the engines' shared
policy: `context_budget` before any work, a StopScanner per sequence over the streaming
detokenizer's text, max_tokens, the tokenizer's EOS ids (BatchGenerator's stop tokens).

Sampling is per sequence, every SamplingParams field: BatchGenerator takes one sampler and one
list of logits processors per sequence. At temperature 0 every sequence shares mlx-lm's
greedy sampler, which BatchGenerator then applies to the whole batch in one call. Otherwise a
sequence gets make_sampler's chain (top-p, min-p, top-k, temperature) whose draw comes from
its own PRNG key instead of MLX's global one: a seed then gives the same text whatever runs
beside it, and the same text as MlxEngine with that seed (mx.random.seed(s) followed by draws
is the key sequence key(s), split before each draw). One difference from make_sampler: a
top_k at or above the vocabulary keeps every token (as llama.cpp does) where make_sampler
raises; in a shared batch an exception would fail every sequence in it.

Prompt cache across jobs (mlx-lm's LRUPromptCache, as mlx_lm.server keeps one): when a sequence
ends, its KV cache is kept under the tokens it holds (prompt and reply), up to
LoadParams.cache_ram_mib (None: as much as the slots' KV cache, which the memory estimate
reserves; 0: none). A new prompt starts from a copy of the kept cache sharing its longest prefix
(a longer one is trimmed to it) and evaluates only the rest; cached_tokens says how many it did
not evaluate. At least the last prompt token is always evaluated: its logits give the first
token. n_ctx is enforced here: mlx-lm's caches grow as needed.

Needs the BatchGenerator of mlx-lm 0.31.2 or later (insert with per-sequence samplers and
logits processors, remove, next() answering prompt and generation responses apart); written
against 0.32.2. `batch_generation_unavailable` tells the engine factory, which falls back to
the serial MlxEngine on an older mlx-lm.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostler.schemas import FinishReason, LoadParams, SamplingParams

from .decoding import context_budget, refuse_llama_only
from .mlx import EmptyPrompt, MlxEngine, logits_processors
from .protocol import EmbeddingsUnsupported, EmbeddingTask, GenerationRequest, StepOutput
from .stops import StopScanner
from .tool_replies import ToolReplies, wants_tools


def batch_generation_unavailable() -> str | None:
    """Why the installed mlx-lm cannot batch as MlxSlots needs (None: it can)."""
    import inspect

    try:
        from mlx_lm.generate import BatchGenerator
    except ImportError:
        return "mlx-lm has no BatchGenerator"
    insert = inspect.signature(BatchGenerator.insert).parameters
    if not (hasattr(BatchGenerator, "insert_segments") and {"samplers", "logits_processors"} <= set(insert)):
        return "mlx-lm's BatchGenerator predates per-sequence samplers (mlx-lm 0.31.2)"
    return None


class _KeyedSampler:
    """mlx-lm's make_sampler chain for temperature > 0, drawing from this sequence's own key."""

    def __init__(self, params: SamplingParams, seed: int) -> None:
        import mlx.core as mx

        self._mx: Any = mx
        self._params = params
        self._key: Any = mx.random.key(seed)

    def __call__(self, logprobs: Any) -> Any:
        from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

        mx, params = self._mx, self._params
        # make_sampler's order and conditions.
        if 0 < params.top_p < 1.0:
            logprobs = apply_top_p(logprobs, params.top_p)
        if params.min_p != 0.0:
            logprobs = apply_min_p(logprobs, params.min_p, 1)
        if 0 < params.top_k < logprobs.shape[-1]:
            logprobs = apply_top_k(logprobs, params.top_k)
        # As MLX's global key sequence: split, keep the first half, draw with the second.
        self._key, draw = mx.random.split(self._key)
        return mx.random.categorical(logprobs * (1.0 / params.temperature), key=draw)


@dataclass
class _Sequence:
    handle: int
    uid: int  # BatchGenerator's
    prompt_tokens: int
    max_tokens: int
    scanner: StopScanner
    detokenizer: Any
    cached: int = 0  # prompt tokens taken from the prompt cache
    completion: int = 0


class _KeptPrompts:
    """Ended sequences' KV caches by the tokens they hold, within a byte budget (least recently
    used first out)."""

    def __init__(self, name: str, budget_bytes: int, n_slots: int) -> None:
        from mlx_lm.models.cache import LRUPromptCache

        self._name = name
        self._lru: Any = LRUPromptCache(max_size=4 * n_slots, max_bytes=budget_bytes)

    def take(self, tokens: list[int]) -> tuple[Any, int]:
        """A copy of the kept cache holding the longest prefix of tokens, trimmed to it, and how
        many tokens it holds; (None, 0) where none shares any. Leaves the last token to evaluate."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        cache, rest = self._lru.fetch_nearest_cache(self._name, tokens)
        if cache is None:
            return None, 0
        if not rest:  # the whole prompt is kept: evaluate its last token again
            if not can_trim_prompt_cache(cache):
                return None, 0
            trim_prompt_cache(cache, 1)
            return cache, len(tokens) - 1
        return cache, len(tokens) - len(rest)

    def keep(self, tokens: list[int], cache: Any) -> None:
        # Only a cache holding exactly these tokens: one cut off mid-prefill holds fewer.
        if cache and tokens and all(getattr(layer, "offset", -1) == len(tokens) for layer in cache):
            self._lru.insert_cache(self._name, list(tokens), cache)


class MlxSlots:
    def __init__(self, path: Path, params: LoadParams, *, chat_template: str | None = None) -> None:
        # MlxEngine loads the folder (and checks it first: mlx-lm would download a missing path).
        self._engine = MlxEngine(path, params, chat_template=chat_template)
        from mlx_lm.generate import BatchGenerator

        budget = _kept_budget(path, params)
        self._kept = _KeptPrompts(path.name, budget, params.n_parallel) if budget > 0 else None

        self._name = path.name
        self._n_slots = params.n_parallel
        self._seed = params.seed
        model: Any = self._engine._model
        self._tokenizer: Any = self._engine._tokenizer
        self._batch: Any = BatchGenerator(
            model,
            stop_tokens=[[token] for token in sorted(self._tokenizer.eos_token_ids)],
            completion_batch_size=self._n_slots,
            prefill_batch_size=self._n_slots,
            prefill_step_size=params.n_batch,
        )
        self._active: dict[int, _Sequence] = {}  # by BatchGenerator uid
        self._handles: dict[int, int] = {}  # handle -> uid
        self._next_handle = 0
        self._closed = False
        self._tools = ToolReplies(path.name)

    @property
    def n_ctx(self) -> int:
        return self._engine.n_ctx

    @property
    def n_slots(self) -> int:
        return self._n_slots

    @property
    def free_slots(self) -> int:
        return self._n_slots - len(self._active)

    def count_tokens(self, text: str) -> int:
        return self._engine.count_tokens(text)

    def start(self, request: GenerationRequest) -> int:
        self._check_open()
        if not self.free_slots:
            raise RuntimeError(f"all {self._n_slots} slots are busy")
        refuse_llama_only(request.params, "MLX")
        scanner = None
        if request.messages is not None:
            _, scanner = self._tools.prepare(request, self._engine.chat_template, grammars=False)
            tools = request.tools if wants_tools(request) else None
            tokens = self._engine.chat_tokens(request.messages, tools)
        else:
            tokens = self._engine.prompt_tokens(request.prompt or "")
        if not tokens:
            raise EmptyPrompt(f"the prompt is empty and {self._name!r} adds no BOS token: there is nothing to continue")
        params = request.params
        max_tokens = context_budget(self._name, len(tokens), self.n_ctx, params.max_tokens)
        processors = logits_processors(params)
        cache, cached = self._kept.take(tokens) if self._kept is not None else (None, 0)
        (uid,) = self._batch.insert(
            [tokens[cached:]],
            [max_tokens],
            caches=[cache],
            # What the cache holds: penalties look back over it as over the prompt.
            all_tokens=[tokens[:cached]],
            samplers=[self._sampler(params)],
            logits_processors=[processors],
        )
        self._next_handle += 1
        self._active[uid] = _Sequence(
            handle=self._next_handle,
            uid=uid,
            prompt_tokens=len(tokens),
            max_tokens=max_tokens,
            scanner=StopScanner(tuple(params.stop)),
            detokenizer=self._tokenizer.detokenizer,
            cached=cached,
        )
        self._handles[self._next_handle] = uid
        self._tools.track(self._next_handle, scanner)
        return self._next_handle

    def step(self) -> list[StepOutput]:
        """One BatchGenerator step: a token for every generating sequence, a chunk of each pending prompt.

        Returns one StepOutput per sequence that took part; a sequence still evaluating its
        prompt gets one with an empty piece.
        """
        self._check_open()
        if not self._active:
            return []
        prompt_responses, generation_responses = self._batch.next()
        outputs: list[StepOutput] = []
        seen: set[int] = set()
        for response in generation_responses:
            seq = self._active.get(response.uid)
            if seq is not None:
                seen.add(seq.uid)
                if response.finish_reason is not None and self._kept is not None:
                    self._kept.keep(response.all_tokens, response.prompt_cache)
                outputs.append(self._advance(seq, int(response.token), response.finish_reason))
        for response in prompt_responses:
            seq = self._active.get(response.uid)
            if seq is not None and seq.uid not in seen:
                seen.add(seq.uid)
                outputs.append(self._output(seq, "", None))
        return self._tools.outputs(outputs)

    def cancel(self, seq: int) -> None:
        uid = self._handles.get(seq)
        if uid is not None:
            # Filters the sequence (and its KV cache) out of whichever batch holds it.
            self._remove(uid)
            self._forget(self._active[uid])
        self._tools.forget(seq)

    def start_embedding(self, inputs: Sequence[str | Sequence[int]], dimensions: int | None) -> EmbeddingTask:
        raise EmbeddingsUnsupported.on("MLX")

    def close(self) -> None:
        """Drops every sequence with the generator; safe after a step that raised."""
        if self._closed:
            return
        self._closed = True
        self._active.clear()
        self._handles.clear()
        batch, self._batch = self._batch, None
        try:
            batch.close()
        finally:
            self._engine.close()

    # -- internals ----------------------------------------------------------------

    def _sampler(self, params: SamplingParams) -> Any:
        if params.temperature == 0:
            from mlx_lm.sample_utils import greedy_sampler

            # One object for every greedy sequence: BatchGenerator samples them in one call.
            return greedy_sampler
        seed = params.seed if params.seed is not None else self._seed
        return _KeyedSampler(params, seed if seed is not None else random.randrange(2**32))

    def _advance(self, seq: _Sequence, token: int, batch_finish: str | None) -> StepOutput:
        """Applies the end rules to a sequence's new token, in decode_pieces' order."""
        if batch_finish == "stop":
            # One of the tokenizer's EOS ids (the only stop tokens given): neither counted nor shown.
            return self._end(seq, "", "stop", removed=True)
        seq.completion += 1
        seq.detokenizer.add_token(token)
        piece = seq.scanner.feed(str(seq.detokenizer.last_segment))
        if seq.scanner.stopped:
            return self._end(seq, piece, "stop", removed=batch_finish is not None)
        if batch_finish is not None or seq.completion >= seq.max_tokens:
            return self._end(seq, piece, "length", removed=batch_finish is not None)
        return self._output(seq, piece, None)

    def _end(self, seq: _Sequence, piece: str, finish: FinishReason, *, removed: bool) -> StepOutput:
        if not removed:
            # A stop string ended it: BatchGenerator would go on decoding it.
            self._remove(seq.uid)
        seq.detokenizer.finalize()
        piece += seq.scanner.feed(str(seq.detokenizer.last_segment)) + seq.scanner.flush()
        self._forget(seq)
        return self._output(seq, piece, finish)

    def _remove(self, uid: int) -> None:
        """Takes a sequence out of the batch, its KV cache to the kept prompts."""
        if self._kept is None:
            self._batch.remove([uid])
            return
        for cache, tokens in self._batch.remove([uid], return_prompt_caches=True).values():
            self._kept.keep(tokens, cache)

    def _forget(self, seq: _Sequence) -> None:
        del self._active[seq.uid]
        del self._handles[seq.handle]

    @staticmethod
    def _output(seq: _Sequence, piece: str, finish: FinishReason | None) -> StepOutput:
        return StepOutput(
            seq=seq.handle,
            piece=piece,
            finish_reason=finish,
            prompt_tokens=seq.prompt_tokens,
            completion_tokens=seq.completion,
            cached_tokens=seq.cached,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this MlxSlots is closed")


def _kept_budget(path: Path, params: LoadParams) -> int:
    """Memory for kept prompt caches: LoadParams.cache_ram_mib, or as much as the slots' KV cache
    (the estimate reserves the same, memory/estimate.py)."""
    from hostler.worker.memory.estimate import EstimateError, estimate_mlx

    if params.cache_ram_mib is not None:
        return params.cache_ram_mib * 2**20
    try:
        return estimate_mlx(path, params).kept_prompts_bytes
    except (EstimateError, OSError, ValueError):
        return 0
