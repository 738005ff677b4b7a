"""What a llama.cpp sequence samples with: its C sampler chain, its grammar sampler beside it,
and the log probabilities of what it sampled.

The chain is built as llama-cpp-python's Llama._init_sampler builds one (penalties over the last
64 tokens, then greedy at temperature 0, else top-k, typical(1.0), top-p, min-p, temperature and
a seeded distribution), so an unconstrained one-slot engine samples the same tokens as in-process
llama-cpp-python.

A grammar (or a JSON schema, or a forced tool call, both turned into one) is kept out of the
chain and checked after it, as llama.cpp's own common_sampler does (grammar_first=false): the
chain picks a token from the raw logits, the grammar checks that one token, and only when it
refuses is the whole vocabulary masked and the chain run again. Checking a token against a
grammar costs about as much per candidate as sampling does for the lot, and a model mostly
picks a token its grammar allows, so masking ~49k candidates first made constrained decoding
about three times slower per token. At temperature 0 the tokens are those of masking first (the
argmax of what the grammar allows is the unmasked argmax whenever that one is allowed); above
0 the distribution is the same masked one, but a seed draws other tokens than llama-cpp-python's
Llama, which masks first. Once the grammar is complete only an end-of-generation token passes,
so a constrained reply ends exactly where its grammar does.

Log probabilities are the model's: log-softmax of the sequence's logits over the whole
vocabulary, the candidates the chain starts from, before penalties, grammar or truncation change
them (the same arithmetic as llama-cpp-python's Llama.logits_to_logprobs, so the values equal its
`create_completion(logprobs=...)` for the same tokens). A constrained token's logprob thus says
how likely the model found it, not how likely the grammar left it.
"""

from __future__ import annotations

import ctypes
import math
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


def sequence_sampler(
    lib: Any, vocab: Any, n_vocab: int, params: SamplingParams, default_seed: int | None, *, grammar_first: bool = False
) -> SequenceSampler:
    """The samplers of one sequence (the caller frees them); InvalidGrammar before anything is
    allocated when its grammar or schema cannot be used.

    grammar_first puts the grammar inside the chain, between penalties and the rest, where
    llama-cpp-python's Llama has it: every candidate is masked before anything is picked. Slower;
    it is what the grammar-after path is measured and tested against.
    """
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
    neutral = params.repeat_penalty == 1.0 and params.frequency_penalty == 0.0 and params.presence_penalty == 0.0
    if constraint is not None and grammar_first:
        add(chain, constraint)  # the chain owns it from here
        constraint = None
    if params.temperature == 0.0:
        add(chain, lib.llama_sampler_init_greedy())
    else:
        add(chain, lib.llama_sampler_init_top_k(params.top_k))
        add(chain, lib.llama_sampler_init_typical(1.0, 1))
        add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
        add(chain, lib.llama_sampler_init_min_p(params.min_p, 1))
        add(chain, lib.llama_sampler_init_temp(params.temperature))
        add(chain, lib.llama_sampler_init_dist(seed))
    argmax = params.temperature == 0.0 and neutral and grammar is None
    return SequenceSampler(lib, chain, constraint, argmax=argmax)


# llama_token_data's layout (int32 id, float logit, float p: 12 bytes, no padding), so numpy
# fills a whole vocabulary of candidates in a few vectorised copies instead of a Python loop.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class Candidates:
    """A llama_token_data_array over the whole vocabulary, and a one-token one, reused token after
    token: an engine samples its sequences one after another, so one set serves them all."""

    def __init__(self, lib: Any, n_vocab: int) -> None:
        if TOKEN_DATA.itemsize != ctypes.sizeof(lib.llama_token_data):
            raise RuntimeError("llama_token_data's layout is not the (int32, float, float) this was written for")
        self.n_vocab = n_vocab
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._data = np.zeros(n_vocab, dtype=TOKEN_DATA)
        self._pointer = ctypes.cast(self._data.ctypes.data, lib.llama_token_data_p)
        self.array = lib.llama_token_data_array()
        self._one = lib.llama_token_data()
        self._one_pointer = ctypes.pointer(self._one)
        self.one = lib.llama_token_data_array()

    def fill(self, logits: np.ndarray[Any, np.dtype[np.float32]]) -> Any:
        """The whole vocabulary with these logits, unsorted and nothing selected; samplers sort,
        shrink and select in place, so every use starts from a fresh fill."""
        data = self._data
        data["id"] = self._ids
        data["logit"] = logits
        data["p"] = 0.0
        array = self.array
        array.data = self._pointer
        array.size = self.n_vocab
        array.selected = -1
        array.sorted = False
        return array

    def single(self, token: int) -> Any:
        """token alone, with a finite logit: a grammar that refuses it sets the logit to -inf
        (single_refused says so)."""
        self._one.id = token
        self._one.logit = 1.0
        self._one.p = 0.0
        one = self.one
        one.data = self._one_pointer
        one.size = 1
        one.selected = -1
        one.sorted = False
        return one

    def single_refused(self) -> bool:
        return bool(self._one.logit == -math.inf)


def selected_token(array: Any) -> int:
    """The token a chain picked: `selected` indexes the array's data as the samplers left it
    (sorted, shrunk), which is not the token id."""
    index = int(array.selected)
    if not 0 <= index < int(array.size):
        raise EngineError(f"the sampler chain selected no token (index {index} of {int(array.size)})")
    return int(array.data[index].id)


class SequenceSampler:
    """One sequence's chain and, for a constrained sequence, its grammar sampler apart from it."""

    def __init__(self, lib: Any, chain: Any, grammar: Any | None, *, argmax: bool = False) -> None:
        self._lib = lib
        self.chain: Any = chain
        self.grammar: Any | None = grammar
        # Greedy with neutral penalties and no grammar: the chain would pick the first largest
        # logit, after copying the whole vocabulary into candidates (85 us on SmolLM2's 49,152
        # tokens, against 7 us for numpy's argmax of the same row; 8 sequences sample one after
        # another every step while llama.cpp's threads wait).
        self.argmax = argmax

    def sample(self, ctx: Any, index: int, candidates: Candidates) -> int:
        """Picks and accepts the next token from output row index of the last llama_decode."""
        lib = self._lib
        if self.grammar is None and not self.argmax:
            # The whole chain in C, exactly as llama-cpp-python's Llama samples.
            return int(lib.llama_sampler_sample(self.chain, ctx, index))
        row = lib.llama_get_logits_ith(ctx, index)
        if not row:
            raise EngineError(f"llama.cpp has no logits for output {index}")
        logits = np.ctypeslib.as_array(row, shape=(candidates.n_vocab,))
        if self.grammar is None:
            # numpy's argmax takes the first of equal maxima, as llama.cpp's greedy sampler does;
            # a NaN (which the greedy sampler would step over) goes through the chain instead.
            token = int(logits.argmax())
            if not math.isnan(logits[token]):
                return token
            return int(lib.llama_sampler_sample(self.chain, ctx, index))
        array = candidates.fill(logits)
        lib.llama_sampler_apply(self.chain, array)
        token = selected_token(array)
        one = candidates.single(token)
        lib.llama_sampler_apply(self.grammar, one)
        if candidates.single_refused():
            # Refused: mask the whole vocabulary, then the chain picks among what is left. The
            # chain's own state (the distribution's generator) moves on as llama.cpp's does here.
            array = candidates.fill(logits)
            lib.llama_sampler_apply(self.grammar, array)
            lib.llama_sampler_apply(self.chain, array)
            token = selected_token(array)
        # llama_sampler_sample accepts on the chain (penalties remember the token); the grammar
        # must advance too, now that it is no longer in the chain.
        lib.llama_sampler_accept(self.grammar, token)
        lib.llama_sampler_accept(self.chain, token)
        return token

    def free(self) -> None:
        if self.grammar is not None:
            self._lib.llama_sampler_free(self.grammar)
            self.grammar = None
        if self.chain is not None:
            self._lib.llama_sampler_free(self.chain)
            self.chain = None


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
