"""What a llama.cpp sequence samples with: its C sampler chain, grammar included, and the log
probabilities of what it sampled.

The chain is built as llama-cpp-python's Llama._init_sampler builds one (penalties over the last
64 tokens, then the grammar, then greedy at temperature 0, else top-k, typical(1.0), top-p,
min-p, temperature and a seeded distribution), so a one-slot engine samples the same tokens as
in-process llama-cpp-python, constrained or not. The grammar sampler masks every token its
grammar cannot take next; once the grammar is complete only an end-of-generation token is left,
so a constrained reply ends exactly where its grammar does.

Log probabilities are the model's: log-softmax of the sequence's logits over the whole
vocabulary, the candidates the chain starts from, before penalties, grammar or truncation change
them (the same arithmetic as llama-cpp-python's Llama.logits_to_logprobs, so the values equal its
`create_completion(logprobs=...)` for the same tokens). A constrained token's logprob thus says
how likely the model found it, not how likely the grammar left it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
from hostler.client._grammar import GrammarError, grammar_of, grammar_sampler
from hostler.schemas import ErrorCode, SamplingParams, TokenLogprob, TopLogprob

from .protocol import EngineError

# llama-cpp-python's Llama(last_n_tokens_size=64): the window its penalties sampler sees.
PENALTY_LAST_N = 64


class InvalidGrammar(EngineError):
    """A job's grammar or JSON schema llama.cpp cannot sample under; the job fails, the worker goes on."""

    code = ErrorCode.INVALID_REQUEST


def sampler_chain(lib: Any, vocab: Any, n_vocab: int, params: SamplingParams, default_seed: int | None) -> Any:
    """A `llama_sampler *` chain for one sequence (the caller frees it); InvalidGrammar before
    anything is allocated when its grammar or schema cannot be used."""
    try:
        grammar = grammar_of(params)
        where = "json_schema (as converted to a grammar)" if params.json_schema is not None else "grammar"
        constraint = grammar_sampler(grammar, vocab=vocab, where=where) if grammar is not None else None
    except GrammarError as exc:
        raise InvalidGrammar(str(exc)) from None
    seed = params.seed if params.seed is not None else default_seed
    if seed is None:
        seed = random.randrange(2**32)
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    add = lib.llama_sampler_chain_add
    penalties = lib.llama_sampler_init_penalties(
        n_vocab, PENALTY_LAST_N, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
    )
    add(chain, penalties)
    if constraint is not None:
        add(chain, constraint)  # the chain owns it from here
    if params.temperature == 0.0:
        add(chain, lib.llama_sampler_init_greedy())
    else:
        add(chain, lib.llama_sampler_init_top_k(params.top_k))
        add(chain, lib.llama_sampler_init_typical(1.0, 1))
        add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
        add(chain, lib.llama_sampler_init_min_p(params.min_p, 1))
        add(chain, lib.llama_sampler_init_temp(params.temperature))
        add(chain, lib.llama_sampler_init_dist(seed))
    return chain


def log_softmax(logits: np.ndarray[Any, np.dtype[np.float32]]) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Llama.logits_to_logprobs' arithmetic, step for step, in float32."""
    top = np.amax(logits)
    shifted = np.subtract(logits, top if np.isfinite(top) else 0, dtype=np.single)
    with np.errstate(divide="ignore"):
        total = np.log(np.sum(np.exp(shifted)))
    result: np.ndarray[Any, np.dtype[np.float32]] = shifted - total
    return result


def token_logprob(
    logits: np.ndarray[Any, np.dtype[np.float32]], token: int, top_n: int, bytes_of: Callable[[int], bytes]
) -> TokenLogprob:
    """token's log probability under logits, with the top_n most likely tokens (most likely first;
    among equals the higher id first, as llama-cpp-python's sort of (logprob, id) pairs orders them)."""
    logprobs = log_softmax(logits)
    top: list[TopLogprob] = []
    if top_n > 0:
        n = min(top_n, logprobs.shape[0])
        best = np.argpartition(logprobs, -n)[-n:]
        for index in sorted(best.tolist(), key=lambda i: (float(logprobs[i]), i), reverse=True):
            data = bytes_of(index)
            top.append(TopLogprob(token=_text(data), logprob=float(logprobs[index]), bytes=list(data)))
    data = bytes_of(token)
    return TokenLogprob(token=_text(data), logprob=float(logprobs[token]), bytes=list(data), top_logprobs=top)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="ignore")


class LogprobTrail:
    """A sequence's token logprobs, handed out with the text they carry.

    Stop strings hold text back, so a step's piece may carry the text of earlier tokens, or none.
    Each token is released with the piece in which its text starts; once the sequence ends, the
    tokens whose text never went out (the stop string and what followed it) are dropped, so the
    logprobs of a result are those of the tokens its text is made of.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[int, TokenLogprob]] = []  # (where its text starts, the entry)
        self._fed = 0  # characters of text decoded so far
        self._released = 0  # characters handed out so far

    def add(self, entry: TokenLogprob, text: str) -> None:
        self._pending.append((self._fed, entry))
        self._fed += len(text)

    def release(self, piece: str, *, final: bool) -> tuple[TokenLogprob, ...]:
        self._released += len(piece)
        n = 0
        while n < len(self._pending) and self._pending[n][0] < self._released:
            n += 1
        out = tuple(entry for _start, entry in self._pending[:n])
        self._pending = [] if final else self._pending[n:]
        return out
