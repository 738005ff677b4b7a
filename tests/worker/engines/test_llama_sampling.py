"""The pure parts of a llama.cpp sequence's sampling: log probabilities and when they go out;
which engines refuse structured output and logprobs. The chain itself runs in
tests/worker/engines/test_structured_e2e.py on a real model."""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp.llama_cpp as lib
import numpy as np
import pytest
from hostler.schemas import SamplingParams, TokenLogprob
from hostler.worker.engines.decoding import Unsupported, refuse_llama_only
from hostler.worker.engines.llama_sampling import (
    Candidates,
    LogprobTrail,
    SequenceSampler,
    log_softmax,
    selected_token,
    sequence_sampler,
    token_logprob,
)
from llama_cpp import Llama


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_softmax_is_llama_cpp_python_s_to_the_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(49_152) * 8).astype(np.float32)
    logits[rng.integers(0, logits.size, 100)] = -np.inf  # masked tokens, as a grammar leaves them
    ours = log_softmax(logits)
    theirs = Llama.logits_to_logprobs(logits)
    assert ours.dtype == np.float32
    assert np.array_equal(ours, theirs)


def test_token_logprob_lists_the_most_likely_first_and_the_chosen_token_s_own() -> None:
    logits = np.array([0.0, 3.0, 1.0, 3.0, -2.0], dtype=np.float32)
    names = {0: b"a", 1: b"b", 2: b"c", 3: b"d", 4: b"\xc3"}
    entry = token_logprob(logits, 4, 3, names.__getitem__)
    expected = Llama.logits_to_logprobs(logits)
    assert entry.logprob == pytest.approx(float(expected[4]))
    # An incomplete UTF-8 byte: no text, but its bytes whole.
    assert entry.token == "" and entry.bytes == [0xC3]
    # Ties go to the higher id, as llama-cpp-python's sort of (logprob, id) pairs puts them.
    assert [top.token for top in entry.top_logprobs] == ["d", "b", "c"]
    assert [top.logprob for top in entry.top_logprobs] == pytest.approx([float(expected[i]) for i in (3, 1, 2)])
    assert token_logprob(logits, 1, 0, names.__getitem__).top_logprobs == []


def _entry(text: str) -> TokenLogprob:
    return TokenLogprob(token=text, logprob=-1.0, bytes=list(text.encode()))


def test_a_token_goes_out_with_the_piece_its_text_starts_in_and_a_stop_string_s_tokens_never() -> None:
    trail = LogprobTrail()
    trail.add(_entry("Hello"), "Hello")
    assert [e.token for e in trail.release("Hello", final=False)] == ["Hello"]
    # " EN" may start the stop string " END": its text is held back, so is its logprob.
    trail.add(_entry(" EN"), " EN")
    assert trail.release("", final=False) == ()
    # It was not the stop string after all: both go out with the piece.
    trail.add(_entry("d"), "d")
    assert [e.token for e in trail.release(" ENd", final=False)] == [" EN", "d"]
    # An incomplete character: no text yet; it goes out with the token that completes it.
    trail.add(_entry(""), "")
    trail.add(_entry("é"), "é")
    assert [e.token for e in trail.release("é", final=False)] == ["", "é"]
    # The stop string " END" was generated: its tokens are dropped at the end.
    trail.add(_entry(" E"), " E")
    trail.add(_entry("ND"), "ND")
    assert trail.release("", final=True) == ()


def test_engines_without_llama_cpp_refuse_structured_output_and_logprobs_by_name() -> None:
    refuse_llama_only(SamplingParams(), "MLX")  # nothing asked, nothing refused
    with pytest.raises(Unsupported, match="MLX engine does not support structured output"):
        refuse_llama_only(SamplingParams(json_schema={"type": "object"}), "MLX")
    with pytest.raises(Unsupported, match="MLX engine does not support structured output"):
        refuse_llama_only(SamplingParams(grammar='root ::= "a"'), "MLX")
    with pytest.raises(Unsupported, match="MLX engine does not return logprobs") as raised:
        refuse_llama_only(SamplingParams(logprobs=0), "MLX")
    assert raised.value.code == "invalid_request"


def _greedy_chain() -> Any:
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_penalties(1000, 64, 1.0, 0.0, 0.0))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
    return chain


@pytest.mark.parametrize("seed", range(6))
def test_argmax_picks_what_llama_cpp_s_greedy_chain_picks_ties_included(seed: int) -> None:
    """The greedy fast path (numpy's argmax of the logits row) against llama.cpp's greedy chain on
    the same row, with many equal maxima and masked tokens."""
    rng = np.random.default_rng(seed)
    logits = rng.integers(-5, 3, 1000).astype(np.float32)  # every value many times over: ties
    logits[rng.integers(0, 1000, 50)] = -np.inf
    chain = _greedy_chain()
    try:
        candidates = Candidates(lib, logits.size)  # held: the array points into its buffer
        array = candidates.fill(logits)
        lib.llama_sampler_apply(chain, array)
        assert selected_token(array) == int(logits.argmax())
    finally:
        lib.llama_sampler_free(chain)


@pytest.mark.parametrize(
    ("params", "argmax"),
    [
        (SamplingParams(temperature=0), True),
        (SamplingParams(temperature=0, max_tokens=3, stop=["x"], logprobs=2), True),
        (SamplingParams(temperature=0.7), False),
        (SamplingParams(temperature=0, repeat_penalty=1.1), False),
        (SamplingParams(temperature=0, frequency_penalty=0.5), False),
        (SamplingParams(temperature=0, presence_penalty=-0.5), False),
    ],
)
def test_only_greedy_with_neutral_penalties_takes_the_argmax(params: SamplingParams, argmax: bool) -> None:
    sampler = sequence_sampler(lib, None, 1000, params, default_seed=1)
    try:
        assert sampler.argmax is argmax
    finally:
        sampler.free()


class _RowOnly:
    """Just enough of llama_cpp for a greedy sampler's fast path: one logits row, and a chain that
    says when it was asked."""

    def __init__(self, *logits: float) -> None:
        self.row = (ctypes.c_float * len(logits))(*logits)
        self.chain_calls = 0

    def llama_get_logits_ith(self, ctx: Any, index: int) -> Any:
        return ctypes.cast(self.row, ctypes.POINTER(ctypes.c_float))

    def llama_sampler_sample(self, chain: Any, ctx: Any, index: int) -> int:
        self.chain_calls += 1
        return 2


def test_the_argmax_path_takes_the_first_maximum_and_leaves_a_nan_row_to_the_chain() -> None:
    plain = _RowOnly(1.0, 5.0, 3.0, 5.0)
    sampler = SequenceSampler(plain, chain=None, grammar=None, argmax=True)
    assert sampler.sample(None, 0, Candidates(lib, 4)) == 1 and plain.chain_calls == 0
    broken = _RowOnly(1.0, math.nan, 3.0, 2.0)
    sampler = SequenceSampler(broken, chain=None, grammar=None, argmax=True)
    assert sampler.sample(None, 0, Candidates(lib, 4)) == 2 and broken.chain_calls == 1
