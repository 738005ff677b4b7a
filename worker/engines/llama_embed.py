"""Embeddings from a GGUF model: a second llama.cpp context on the generation's weights.

Why a second context rather than `llama_set_embeddings` on the generation context: a
context's pooling type is fixed when it is made, an embedding batch would need a free slot
and would overwrite that slot's prompt cache, and its micro-batches are the generation's.
This context shares the model (weights are not loaded twice) and has a unified KV cache.

What it costs (memory/embedding.py): a generative model's graph ends in its output layer, so
llama.cpp computes the logits of every token of an embedding batch and keeps them twice,
2 x n_tokens x n_vocab x 4 bytes, far more than the vectors. So no decode holds more than
`budget` tokens (about 16 MiB of logits), however long the inputs:
- causal models (every generative model) are decoded without llama.cpp's pooling: an input
  longer than what is left of a decode continues in the next one, attending to its own
  earlier tokens in the KV cache (chunked, as a prompt is prefilled), and hostler pools the
  per-token states (mean, first or last token) itself, in float64;
- non-causal models (BERT-like embedding models, which have no output layer and so no logits)
  need an input's every token in one micro-batch: llama.cpp pools them, whole inputs are
  packed, and an input longer than the budget goes alone in a decode of its own length.
The context is made for the first open task, sized for its longest input, and freed when the
last open task ends: the memory goes back while no embedding job runs.

Vectors are those of llama-cpp-python's `Llama(embedding=True).embed(text, normalize=True)`:
the same tokens (BOS added, special tokens not parsed), the model's own pooling, normalised to
unit L2 length in float64. A model that declares no pooling (every generative model) is pooled
by mean; llama-cpp-python would return one vector per token.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hostler.schemas import Pooling
from hostler.worker.memory.embedding import KV_CELL_PAD, packing_budget

from .llama_token_batch import TokenBatch
from .protocol import ContextExceeded, EmbeddingOutput, EmbeddingsUnsupported, EngineError, InvalidInput

# GGUF `<arch>.pooling_type` values (llama.cpp's enum llama_pooling_type).
_POOLING_NAMES: dict[int, Pooling] = {1: "mean", 2: "cls", 3: "last"}
_POOLING_TYPES: dict[Pooling, int] = {name: value for value, name in _POOLING_NAMES.items()}
_POOLING_NONE = 0
_RANK = 4


def model_pooling(metadata: dict[str, str]) -> Pooling:
    """The model's own pooling from its GGUF metadata; mean where it declares none."""
    arch = metadata.get("general.architecture", "")
    raw = metadata.get(f"{arch}.pooling_type")
    value = int(raw) if raw is not None and raw.lstrip("-").isdigit() else 0
    if value == _RANK:
        raise EmbeddingsUnsupported("this model is a reranker (pooling type rank): it scores pairs, it embeds nothing")
    return _POOLING_NAMES.get(value, "mean")


def model_is_causal(metadata: dict[str, str]) -> bool:
    """llama.cpp's `<arch>.attention.causal`, true unless the model says otherwise (BERT-like ones)."""
    arch = metadata.get("general.architecture", "")
    return metadata.get(f"{arch}.attention.causal", "true").lower() not in ("false", "0")


def _pad(n: int) -> int:
    return -(-n // KV_CELL_PAD) * KV_CELL_PAD


@dataclass
class _Run:
    """Tokens [start, end) of one input in a decode, under sequence id seq."""

    index: int
    start: int
    end: int
    seq: int


class LlamaEmbedder:
    """The embedding context of one model: made on demand, freed when no task is open."""

    def __init__(self, lib: Any, internals: Any, model: Any, *, name: str, n_ctx: int, n_batch: int, threads: int):
        self._lib = lib
        self._internals = internals
        self._model = model
        self._name = name
        self.n_ctx = n_ctx
        self.n_embd = int(lib.llama_model_n_embd(model.model))
        self._n_vocab = int(model.n_vocab())
        metadata = model.metadata()
        self.pooling = model_pooling(metadata)
        self.causal = model_is_causal(metadata)
        self.budget = packing_budget(self._n_vocab, n_batch)
        self.seq_limit = max(1, min(self.budget, int(lib.llama_max_parallel_sequences())))
        self._threads = threads
        self._context: Any = None
        self._cells = 0
        self._open = 0  # tasks started and not yet ended
        self._continuing: object = None  # the task whose input goes on in the next decode
        self._closed = False

    # -- what a task asks -----------------------------------------------------------------

    def tokens(self, inputs: Sequence[str | Sequence[int]], dimensions: int | None) -> list[list[int]]:
        """Every input's tokens, checked against the vocabulary and the context before any decode."""
        if dimensions is not None and dimensions > self.n_embd:
            raise InvalidInput(
                f"dimensions {dimensions} is larger than model {self._name!r}'s embedding size {self.n_embd}"
            )
        found = []
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                # As Llama.embed tokenizes: BOS (and EOS/SEP where the model adds them), no special parsing.
                tokens = list(self._model.tokenize(item.encode("utf-8"), True, False))
            else:
                tokens = list(item)
                if tokens and (min(tokens) < 0 or max(tokens) >= self._n_vocab):
                    top = self._n_vocab - 1
                    where = f"model {self._name!r}'s vocabulary (0..{top})"
                    raise InvalidInput(f"input {index} has token ids outside {where}")
            if not tokens:
                raise InvalidInput(f"input {index} has no tokens")
            if len(tokens) > self.n_ctx:
                raise ContextExceeded(
                    f"input {index} is {len(tokens)} tokens but model {self._name!r}'s context is {self.n_ctx} tokens"
                )
            found.append(tokens)
        return found

    def cells_for(self, inputs: Sequence[list[int]]) -> int:
        """KV cells a task's decodes need: a chunked input keeps its earlier tokens while the next
        budget's worth is decoded; a whole input (non-causal) needs only its own."""
        longest = max(len(tokens) for tokens in inputs)
        return _pad(longest + self.budget if self.causal else max(longest, self.budget))

    def opened(self) -> None:
        self._open += 1

    def ended(self) -> None:
        """A task ended; the last one frees the context (its logits buffer above all)."""
        self._open = max(0, self._open - 1)
        if self._open == 0:
            self._release()

    def plan(self, inputs: Sequence[list[int]], index: int, offset: int) -> list[_Run]:
        """The next decode: from input `index`, token `offset` on, at most `budget` tokens (a
        non-causal model's input whole, alone if it is longer), at most seq_limit inputs."""
        runs: list[_Run] = []
        total = 0
        while index < len(inputs) and len(runs) < self.seq_limit:
            left = len(inputs[index]) - offset
            room = self.budget - total
            if room <= 0 or (not self.causal and left > room and runs):
                break
            take = left if not self.causal else min(left, room)
            runs.append(_Run(index, offset, offset + take, index % self.seq_limit))
            total += take
            if take < left:
                break  # the rest of this input goes in the next decode
            index, offset = index + 1, 0
        return runs

    def decode(
        self, owner: object, inputs: Sequence[list[int]], runs: Sequence[_Run], cells: int
    ) -> np.ndarray[Any, Any]:
        """One decode of owner's runs; each token's state (causal models) or each input's pooled vector.

        An input split across decodes keeps its earlier tokens in the KV cache, so tasks must be
        stepped one at a time: another task's decode in between would have dropped them.
        """
        if runs[0].start > 0 and self._continuing is not owner:
            raise EngineError("an embedding task was stepped while another one had an input half decoded")
        self._continuing = None
        self._ensure(cells, fresh=runs[0].start == 0)
        lib, ctx = self._lib, self._context.ctx
        memory = lib.llama_get_memory(ctx)
        if memory and runs[0].start == 0:
            lib.llama_memory_clear(memory, True)
        n_tokens = sum(run.end - run.start for run in runs)
        batch = TokenBatch(lib, n_tokens, self.seq_limit)
        for run in runs:
            batch.add(inputs[run.index][run.start : run.end], run.start, run.seq, "all")
        rc = lib.llama_decode(ctx, batch.struct)
        if rc != 0:
            raise EngineError(f"llama_decode failed with status {rc} on an embedding batch of {n_tokens} tokens")
        states = self._states(runs, n_tokens)
        if memory:
            for run in runs:
                if run.end == len(inputs[run.index]):
                    lib.llama_memory_seq_rm(memory, run.seq, -1, -1)
        if runs[-1].end < len(inputs[runs[-1].index]):
            self._continuing = owner
        return states

    def _states(self, runs: Sequence[_Run], n_tokens: int) -> np.ndarray[Any, Any]:
        lib, ctx = self._lib, self._context.ctx
        if self.causal:
            pointer = lib.llama_get_embeddings(ctx)
            if not pointer:
                raise EngineError("llama.cpp returned no token embeddings")
            return np.ctypeslib.as_array(pointer, shape=(n_tokens, self.n_embd)).astype(np.float64)
        rows = []
        for run in runs:
            pointer = lib.llama_get_embeddings_seq(ctx, run.seq)
            if not pointer:
                raise EngineError(f"llama.cpp returned no pooled embedding for sequence {run.seq}")
            rows.append(np.ctypeslib.as_array(pointer, shape=(self.n_embd,)).astype(np.float64))
        return np.stack(rows)

    def close(self) -> None:
        """For good: the model goes with the engine; tasks still open fail at their next step."""
        self._closed = True
        self._release()

    # -- the context ------------------------------------------------------------------------

    def _release(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None
            self._cells = 0
            _return_freed_memory()

    def _ensure(self, cells: int, *, fresh: bool) -> None:
        """A context of at least `cells` KV cells; made again only between inputs (fresh)."""
        if self._closed:
            raise EngineError(f"model {self._name!r} was closed while this embedding job waited")
        if self._context is not None and (cells <= self._cells or not fresh):
            return
        self._release()
        lib = self._lib
        params = lib.llama_context_default_params()
        params.n_ctx = cells
        # Causal: decodes of at most the budget. Non-causal: an input's every token in one micro-batch.
        params.n_batch = params.n_ubatch = cells if not self.causal else _pad(self.budget)
        params.n_seq_max = self.seq_limit
        params.kv_unified = True
        params.embeddings = True
        # Causal models: every token's state, pooled here, so that an input may span decodes.
        params.pooling_type = _POOLING_NONE if self.causal else _POOLING_TYPES[self.pooling]
        params.n_threads = self._threads
        params.n_threads_batch = self._threads
        # As llama-cpp-python's Llama, whose vectors these must equal.
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        try:
            self._context = self._internals.LlamaContext(model=self._model, params=params, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(f"llama.cpp could not make an embedding context of {cells} tokens: {exc}") from None
        self._cells = cells


def _return_freed_memory() -> None:
    """glibc keeps freed heap pages for reuse; an idle worker's embedding context should cost
    nothing, so they go back to the system (measured: 26 of 27 MiB after a long input)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return  # not glibc (macOS, musl): nothing to trim
    trim(0)


def unit(values: Any) -> list[float]:
    norm = float(np.linalg.norm(values))
    result: list[float] = (values / norm if norm > 0.0 else values).tolist()
    return result


class LlamaEmbeddingTask:
    """One job's inputs, embedded a decode per step()."""

    def __init__(self, embedder: LlamaEmbedder, inputs: Sequence[str | Sequence[int]], dimensions: int | None):
        self._embedder = embedder
        self._inputs = embedder.tokens(inputs, dimensions)
        self._cells = embedder.cells_for(self._inputs)
        self._dimensions = dimensions
        self._vectors: list[list[float]] = []
        self._index = 0  # the input the next decode starts in, and its first token there
        self._offset = 0
        self._pooled: Any = None  # the input in progress: its states' sum (mean), or the one state kept
        self._ended = False
        self.prompt_tokens = sum(len(tokens) for tokens in self._inputs)
        embedder.opened()

    @property
    def done(self) -> bool:
        return len(self._vectors) == len(self._inputs)

    def step(self) -> None:
        if self.done:
            return
        embedder = self._embedder
        runs = embedder.plan(self._inputs, self._index, self._offset)
        try:
            states = embedder.decode(self, self._inputs, runs, self._cells)
        except BaseException:
            self.close()
            raise
        row = 0
        for run in runs:
            if embedder.causal:
                self._pool(states[row : row + run.end - run.start], run)
                row += run.end - run.start
            else:
                self._keep(states[row])
                row += 1
        last = runs[-1]
        self._index, self._offset = (last.index + 1, 0) if last.end == len(self._inputs[last.index]) else (
            last.index, last.end,
        )  # fmt: skip
        if self.done:
            self.close()

    def _pool(self, states: Any, run: _Run) -> None:
        pooling = self._embedder.pooling
        if pooling == "mean":
            total = states.sum(axis=0)
            self._pooled = total if run.start == 0 else self._pooled + total
        elif pooling == "cls":
            if run.start == 0:
                self._pooled = states[0]
        else:
            self._pooled = states[-1]
        length = len(self._inputs[run.index])
        if run.end == length:
            self._keep(self._pooled / length if pooling == "mean" else self._pooled)
            self._pooled = None

    def _keep(self, vector: Any) -> None:
        self._vectors.append(unit(vector[: self._dimensions] if self._dimensions is not None else vector))

    def result(self) -> EmbeddingOutput:
        if not self.done:
            raise RuntimeError("the embedding task has not finished")
        dimensions = self._dimensions if self._dimensions is not None else self._embedder.n_embd
        return EmbeddingOutput(self._vectors, dimensions, self._embedder.pooling, self.prompt_tokens)

    def close(self) -> None:
        """Ends the task (done, failed or dropped); idempotent."""
        if not self._ended:
            self._ended = True
            self._embedder.ended()
