"""Continuous batching over llama.cpp: up to n_slots sequences of one model in one decode loop.

A worker submits sequences (prompt tokens + sampling params) and calls step() in a loop; it
may do other work (Redis, cancellations, admitting jobs) between steps. Each step is one
llama_decode over a batch of at most n_batch tokens: first the next token of every
generating sequence, then chunks of the prompts still being evaluated, oldest first
(chunked prefill), so a long new prompt never holds the others up for more than one chunk.

Every sequence owns one llama.cpp sequence id (its slot) and samples in C through its own
sampler chain (llama_sampling.py: built as llama-cpp-python's Llama.generate() builds one), so a
one-slot engine produces the same tokens as in-process llama-cpp-python (with flash attention as
llama.cpp's default picks it; see flash_attn_type). A job's grammar is checked after the chain
picks, not before (llama_sampling.py says why): the same tokens at temperature 0, the same
distribution above. A job that asks for logprobs gets them from the logits it sampled from.
Text is detokenized incrementally and stop strings, max_tokens and end-of-generation tokens
end each sequence on its own.

KV cache layout: one stream per slot (llama.cpp's non-unified KV cache, n_ctx cells each),
so every sequence's cells sit at the same places as they would in a context of its own:
attention then sums the same numbers in the same order as a solo run, and a batched text
equals its solo text wherever the matrix products do (see docs/architecture.md and
scripts/bench_llama_batch.py for what was measured). Attention still spans the longest
stream among the sequences of a physical batch (masked beyond each one's own cells), so one
long sequence slows the others' tokens. llama.cpp splits a batch over split streams into
physical batches of consecutive sequence ids with equally many tokens each, so a step that
admits a prompt runs as two, and busy slots with gaps between them as more: before each step the
slot cache moves sequences into such gaps (slot_packing.py). A unified cache was measured too (kv_unified=True): one
physical batch per step and prefixes shared without copying, about 10% more tokens/s on
short chats, but every token attends over every cell in use, kept prompt caches included,
and batched texts differ from solo ones far more often (19/32 against 31/32 on SmolLM2).

Prompt cache (slot_cache.py, kept_prompts.py): a new sequence takes the slot whose cells, or
another slot's, or a prompt kept in host memory, hold the longest prefix of its prompt, and
evaluates only the rest; cached_tokens reports the prompt tokens not evaluated.
"""

from __future__ import annotations

import codecs
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hostler.schemas import ChatMessage, FinishReason, LoadParams, SamplingParams, TokenLogprob, Tool
from hostler.worker.hardware.cpu import usable_cores
from hostler.worker.memory.estimate import EstimateError, estimate_gguf

from .chat_render import template_messages, template_tools
from .decoding import context_budget
from .llama_cpu import check_gguf_header, flash_attn_type
from .llama_cpu import model_params as safe_model_params
from .llama_embed import LlamaEmbedder
from .llama_sampling import Candidates, LogprobTrail, SequenceSampler, sequence_sampler, token_logprob
from .llama_token_batch import TokenBatch
from .llama_vocab import VocabPieces
from .protocol import EngineError, LoadFailed, NoChatTemplate, StepOutput
from .slot_cache import Slot, SlotCache
from .stops import StopScanner

# llama-cpp-python's Llama caps the physical batch at 512 tokens.
MAX_UBATCH = 512
FOLLOW_CORES_EVERY_S = 1.0


@dataclass
class SequenceRequest:
    """One generation: the prompt, already tokenized, and how to sample it."""

    tokens: list[int]
    params: SamplingParams
    extra_stops: tuple[str, ...] = ()  # from the chat template


@dataclass(eq=False)
class _Sequence:
    handle: int
    slot: Slot
    prompt: list[int]
    sampler: SequenceSampler  # freed when the sequence ends
    scanner: StopScanner
    max_tokens: int
    cached: int
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="ignore")
    )
    evaluated: int = 0  # prompt tokens in the KV cache (cached ones included)
    completion: int = 0
    next_token: int = -1  # sampled, to be decoded in the next step; -1 while prefilling
    out_index: int = -1  # where this step's logits are in the batch, -1 for none
    top_logprobs: int | None = None  # params.logprobs: None computes none
    trail: LogprobTrail = field(default_factory=LogprobTrail)


class BatchedLlama:
    """One GGUF model serving up to n_slots sequences at once; drive it with submit() and step()."""

    def __init__(
        self,
        path: Path,
        params: LoadParams,
        *,
        chat_template: str | None = None,
        kv_unified: bool = False,
        grammar_first: bool = False,
    ) -> None:
        """grammar_first: mask every candidate with a sequence's grammar before its chain picks, as
        llama-cpp-python's Llama does; slower, kept as the reference the default path is tested
        and measured against (llama_sampling.sequence_sampler)."""
        import llama_cpp  # deferred: the client must work without llama.cpp installed
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose

        self._lib: Any = llama_cpp
        check_gguf_header(path)
        set_verbose(False)
        llama_cpp.llama_backend_init()
        self.n_slots = max(1, params.n_parallel)
        # Every generating sequence puts one token in every batch.
        self._n_batch = max(min(params.n_batch, params.n_ctx), self.n_slots)
        threads = params.n_threads or len(usable_cores())
        # Unless the load fixed it, the thread count follows the cores this process may use.
        self._auto_threads = params.n_threads is None
        self._threads = threads
        self._cores_seen = time.monotonic()
        model_params = safe_model_params(llama_cpp)  # no extra buffer types where they crash (AMX)
        model_params.n_gpu_layers = 0x7FFFFFFF if params.n_gpu_layers == -1 else params.n_gpu_layers
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = params.n_ctx * self.n_slots
        ctx_params.n_batch = self._n_batch
        ctx_params.n_ubatch = min(self._n_batch, MAX_UBATCH)
        ctx_params.n_seq_max = self.n_slots
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx_params.flash_attn_type = flash_attn_type(llama_cpp, params.flash_attn)
        ctx_params.kv_unified = kv_unified
        ctx_params.no_perf = True
        internals: Any = _internals  # untyped: Any at the boundary
        try:
            self._model: Any = internals.LlamaModel(path_model=str(path), params=model_params, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise LoadFailed(f"llama.cpp could not load {path.name}: {exc}") from None
        try:
            self._context: Any = internals.LlamaContext(model=self._model, params=ctx_params, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            self._model.close()
            raise LoadFailed(f"llama.cpp could not make a context for {path.name}: {exc}") from None
        self._ctx: Any = self._context.ctx
        self._mem: Any = llama_cpp.llama_get_memory(self._ctx)
        self._vocab: Any = self._model.vocab
        self._n_vocab = int(self._model.n_vocab())
        self._bos = int(self._model.token_bos())
        per_seq = int(llama_cpp.llama_n_ctx_seq(self._ctx))
        self.n_ctx = min(params.n_ctx, per_seq)
        self._unified = kv_unified or self.n_slots == 1
        self._path = path
        self._seed = params.seed
        self._template_source = chat_template or self._model.metadata().get("tokenizer.chat_template")
        self._formatter: Any = None
        self._batch = TokenBatch(llama_cpp, self._n_batch, self.n_slots)
        self._candidates = Candidates(llama_cpp, self._n_vocab)
        self._grammar_first = grammar_first
        self._active: dict[int, _Sequence] = {}  # by handle, in admission order
        self._handles = itertools.count(1)
        self._pieces = VocabPieces(llama_cpp, self._vocab, self._bos)
        self._cache = SlotCache(
            llama_cpp, self._ctx, self._mem, self.n_slots, self.n_ctx, self._unified, _kept_budget(path, params)
        )
        self._closed = False

    # -- what a worker asks ---------------------------------------------------------

    @property
    def free_slots(self) -> int:
        return self._cache.free_slots

    @property
    def active(self) -> int:
        return len(self._active)

    def count_tokens(self, text: str) -> int:
        return len(self.prompt_tokens(text))

    def prompt_tokens(self, prompt: str) -> list[int]:
        """Tokens of a completion prompt, exactly as Llama.create_completion builds them."""
        bos = [self._bos] if self._model.add_bos_token() and self._bos != -1 else []
        body = self._model.tokenize(prompt.encode("utf-8"), False, True) if prompt else []
        return bos + list(body)

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template chats are rendered with (model.yaml's, else the GGUF's)."""
        return self._template_source

    def chat_tokens(
        self, messages: Sequence[ChatMessage], tools: Sequence[Tool] | None = None
    ) -> tuple[list[int], tuple[str, ...]]:
        """Tokens of a chat (and the tools it may call) through the model's template, and the
        template's stop strings."""
        extra = {"tools": template_tools(tools)} if tools else {}
        rendered = self._chat_formatter()(messages=template_messages(messages), **extra)
        # The template writes BOS itself where the model wants it, as llama-cpp-python assumes.
        tokens = self._model.tokenize(rendered.prompt.encode("utf-8"), False, True)
        stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop]
        return list(tokens), tuple(s for s in stops if s)

    def submit(self, request: SequenceRequest) -> int:
        """Admits a sequence into a free slot; returns its handle. Nothing is evaluated yet.

        Raises ContextExceeded when the prompt leaves no room, RuntimeError when no slot is free.
        """
        self._check_open()
        tokens = list(request.tokens)
        if not tokens:
            raise EngineError("the prompt has no tokens")
        if min(tokens) < 0 or max(tokens) >= self._n_vocab:
            raise EngineError(f"the prompt has token ids outside this model's vocabulary (0..{self._n_vocab - 1})")
        max_tokens = context_budget(self._path.stem, len(tokens), self.n_ctx, request.params.max_tokens)
        # Before any slot is touched: a grammar llama.cpp refuses fails this sequence alone.
        sampler = sequence_sampler(
            self._lib, self._vocab, self._n_vocab, request.params, self._seed, grammar_first=self._grammar_first
        )
        try:
            slot, cached = self._cache.take(tokens)
        except RuntimeError:
            sampler.free()
            raise
        handle = next(self._handles)
        seq = _Sequence(
            handle=handle,
            slot=slot,
            prompt=tokens,
            sampler=sampler,
            scanner=StopScanner(tuple(request.params.stop) + tuple(request.extra_stops)),
            max_tokens=max_tokens,
            cached=cached,
            evaluated=cached,
            top_logprobs=request.params.logprobs,
        )
        slot.busy = seq
        self._active[handle] = seq
        return handle

    def step(self) -> list[StepOutput]:
        """One llama_decode: the next token of every generating sequence, then prompt chunks.

        Returns one StepOutput for every sequence that took part. An EngineError leaves the
        KV cache and every sequence as they were before the step.
        """
        self._check_open()
        if not self._active:
            return []
        self._follow_cores()
        for slot in self._cache.pack():
            moved = slot.busy
            assert isinstance(moved, _Sequence)
            moved.slot = slot
        runs = self._plan()
        batch = self._batch
        batch.clear()
        for seq, chunk, start in runs:
            logits = seq.next_token >= 0 or start + len(chunk) == len(seq.prompt)
            index = batch.add(chunk, start, seq.slot.index, "last" if logits else "none")
            seq.out_index = index if logits else -1
        rc = self._lib.llama_decode(self._ctx, batch.struct)
        if rc != 0:
            for seq, _chunk, start in runs:
                self._lib.llama_memory_seq_rm(self._mem, seq.slot.index, start, -1)
            raise EngineError(f"llama_decode failed with status {rc} on a batch of {batch.n} tokens")
        outputs = []
        for seq, chunk, _start in runs:
            seq.slot.history.extend(chunk)
            if seq.next_token < 0:
                seq.evaluated += len(chunk)
            outputs.append(self._advance(seq))
        return outputs

    def _follow_cores(self) -> None:
        """As many threads as the cores this process may use now, looked up at most once a
        second: a host agent divides its cores among its workers and changes a worker's share
        as others start and stop (worker/control/cores.py)."""
        now = time.monotonic()
        if not self._auto_threads or now - self._cores_seen < FOLLOW_CORES_EVERY_S:
            return
        self._cores_seen = now
        cores = len(usable_cores())
        if cores != self._threads:
            self._lib.llama_set_n_threads(self._ctx, cores, cores)
            self._threads = cores

    def cancel(self, seq: int) -> None:
        """Ends a sequence now and frees its slot (its KV cells stay as prompt cache)."""
        found = self._active.get(seq)
        if found is not None:
            self._end(found)

    def embedder(self) -> LlamaEmbedder:
        """Embeddings from this model's weights, through a context of their own (llama_embed.py)."""
        self._check_open()
        from llama_cpp import _internals

        threads = int(self._context.params.n_threads)
        return LlamaEmbedder(
            self._lib, _internals, self._model, name=self._path.stem, n_ctx=self.n_ctx, n_batch=self._n_batch,
            threads=threads,
        )  # fmt: skip

    def close(self) -> None:
        if self._closed:
            return
        for seq in list(self._active.values()):
            self._end(seq)
        self._closed = True
        self._cache.close()
        self._context.close()
        self._model.close()

    # -- one step ---------------------------------------------------------------------

    def _plan(self) -> list[tuple[_Sequence, list[int], int]]:
        """(sequence, tokens, first position) for this step, in slot order.

        Generating sequences first, one token each; the rest of the budget goes to prompts
        in admission order. Slot order keeps llama.cpp's per-stream split of a batch into
        as few physical batches as the busy slots allow (it groups consecutive ids).
        """
        runs: list[tuple[_Sequence, list[int], int]] = []
        budget = self._n_batch
        for seq in self._active.values():
            if seq.next_token >= 0:
                runs.append((seq, [seq.next_token], len(seq.slot.history)))
                budget -= 1
        for seq in self._active.values():
            if budget <= 0:
                break
            if seq.next_token < 0:
                chunk = seq.prompt[seq.evaluated : seq.evaluated + budget]
                runs.append((seq, chunk, seq.evaluated))
                budget -= len(chunk)
        runs.sort(key=lambda run: run[0].slot.index)
        return runs

    def _advance(self, seq: _Sequence) -> StepOutput:
        """Samples seq's next token if this step gave it logits, and applies the end rules."""
        piece = ""
        finish: FinishReason | None = None
        if seq.out_index >= 0:
            token = seq.sampler.sample(self._ctx, seq.out_index, self._candidates)
            ends, data = self._pieces.info(token)
            if ends:
                finish = "stop"
            else:
                seq.completion += 1
                text = seq.decoder.decode(data)
                if seq.top_logprobs is not None:
                    seq.trail.add(self._logprob(seq, token), text)
                piece = seq.scanner.feed(text)
                if seq.scanner.stopped:
                    finish = "stop"
                elif seq.completion >= seq.max_tokens:
                    finish = "length"
                else:
                    seq.next_token = token
        if finish is not None:
            piece += seq.scanner.feed(seq.decoder.decode(b"", final=True)) + seq.scanner.flush()
            self._end(seq)
        logprobs = seq.trail.release(piece, final=finish is not None) if seq.top_logprobs is not None else ()
        return StepOutput(seq.handle, piece, finish, len(seq.prompt), seq.completion, seq.cached, logprobs)

    def _logprob(self, seq: _Sequence, token: int) -> TokenLogprob:
        """token's logprob from the logits it was sampled from (still in the context's output buffer)."""
        row = self._lib.llama_get_logits_ith(self._ctx, seq.out_index)
        logits = np.ctypeslib.as_array(row, shape=(self._n_vocab,))
        return token_logprob(logits, token, seq.top_logprobs or 0, lambda t: self._pieces.info(t)[1])

    def _end(self, seq: _Sequence) -> None:
        del self._active[seq.handle]
        seq.sampler.free()
        self._cache.release(seq.slot)

    # -- helpers ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this BatchedLlama is closed")

    def _chat_formatter(self) -> Any:
        if self._template_source is None:
            raise NoChatTemplate(
                f"model {self._path.stem!r} has no chat template in its GGUF metadata; use complete() "
                "instead, or set `chat_template:` (a Jinja template) in a model.yaml beside the file"
            )
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(
                template=self._template_source,
                eos_token=self._model.token_get_text(self._model.token_eos()),
                bos_token=self._model.token_get_text(self._bos),
            )
        return self._formatter


def _kept_budget(path: Path, params: LoadParams) -> int:
    """Host memory for kept prompts: LoadParams.cache_ram_mib, or as much as the slots' KV cache
    (the estimate counts the same, memory/estimate.py)."""
    try:
        return estimate_gguf(path, params).kept_prompts_bytes
    except (EstimateError, OSError, ValueError):
        return 0
