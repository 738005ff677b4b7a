"""seed -1, llama.cpp's "pick one at random", is accepted wherever a seed is."""

from __future__ import annotations

import pytest
from hostler.schemas import ChatCompletionRequest, CompletionRequest, LoadParams, SamplingParams
from pydantic import ValidationError


def test_seed_minus_one_means_random_and_other_negative_seeds_are_refused() -> None:
    assert SamplingParams(seed=-1).seed is None
    assert SamplingParams(seed=7).seed == 7
    assert LoadParams(seed=-1).seed is None
    chat = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": -1}
    )
    assert SamplingParams(**chat.sampling()).seed is None
    text = CompletionRequest.model_validate({"model": "m", "prompt": "x", "seed": -1})
    assert SamplingParams(**text.sampling()).seed is None
    for refuse in (lambda: SamplingParams(seed=-2), lambda: CompletionRequest.model_validate(
        {"model": "m", "prompt": "x", "seed": -2}
    )):  # fmt: skip
        with pytest.raises(ValidationError, match="seed"):
            refuse()
