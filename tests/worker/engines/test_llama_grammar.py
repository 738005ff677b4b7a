"""Constrained sampling on real llama.cpp: the grammar checked after the chain picks (the engine's
path) against the grammar masking every candidate first (grammar_first, llama-cpp-python's
Llama's way). Greedy, the two must pick the same tokens; sampled, every reply must still parse."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bench_structured import SCHEMA
from hostler.schemas import ChatMessage, LoadParams, SamplingParams
from hostler.worker.engines.llama_batch import BatchedLlama, SequenceRequest
from structured_cases import MAX_TOKENS, SCHEMAS, check

YES_NO = 'root ::= ("yes" | "no") ", because " [a-z ]{3,40} "."'
LIST = 'root ::= "- " item ("\\n- " item){2} \nitem ::= [A-Z] [a-z]{2,12}'
# The capital-city schema scripts/bench_structured.py measures.
CAPITAL: dict[str, Any] = SCHEMA


@dataclass
class Case:
    prompt: str
    params: SamplingParams
    chat: bool = True


def greedy(**constraint: Any) -> SamplingParams:
    return SamplingParams(max_tokens=120, temperature=0, logprobs=1, **constraint)


CASES = [
    Case("What is the capital of France? Answer in JSON.", greedy(json_schema=CAPITAL)),
    Case("Describe a person in JSON.", greedy(json_schema=SCHEMAS[0])),
    Case("Pick a color and say whether you like it, in JSON.", greedy(json_schema=SCHEMAS[2])),
    Case("Give me a point in JSON.", greedy(json_schema=SCHEMAS[4])),
    # Penalties count accepted tokens: they must see the same ones on both paths.
    Case(
        "List some tags for a blog post about cats, in JSON.",
        greedy(json_schema=SCHEMAS[5]).model_copy(update={"repeat_penalty": 1.3, "frequency_penalty": 0.4}),
    ),
    # A plain completion prompt a model never continues this way: its first picks are refused.
    Case("Once upon a time", greedy(grammar=YES_NO), chat=False),
    Case("The three primary colors are", greedy(grammar=LIST), chat=False),
]


class CountingLib:
    """llama_cpp, counting how often a grammar checked one token and how often a whole vocabulary."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.single = 0
        self.whole = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def llama_sampler_apply(self, sampler: Any, array: Any) -> None:
        size = int(array.size)
        name = self._lib.llama_sampler_name(sampler)
        if name == b"grammar":
            if size == 1:
                self.single += 1
            else:
                self.whole += 1
        self._lib.llama_sampler_apply(sampler, array)


@dataclass
class Reply:
    text: str
    finish_reason: str | None
    tokens: list[bytes]
    logprobs: list[float]


def run(engine: BatchedLlama, cases: Sequence[Case]) -> list[Reply]:
    """All cases at once, as many in flight as the engine has slots; replies in order."""
    replies = [Reply("", None, [], []) for _ in cases]
    pending = list(range(len(cases)))
    live: dict[int, int] = {}
    while pending or live:
        while pending and engine.free_slots:
            index = pending.pop(0)
            case = cases[index]
            if case.chat:
                tokens, stops = engine.chat_tokens([ChatMessage(role="user", content=case.prompt)])
            else:
                tokens, stops = engine.prompt_tokens(case.prompt), ()
            live[engine.submit(SequenceRequest(tokens, case.params, stops))] = index
        for out in engine.step():
            reply = replies[live[out.seq]]
            reply.text += out.piece
            reply.tokens += [bytes(entry.bytes or []) for entry in out.logprobs]
            reply.logprobs += [entry.logprob for entry in out.logprobs]
            if out.finish_reason is not None:
                reply.finish_reason = out.finish_reason
                del live[out.seq]
    return replies


@pytest.fixture(scope="module")
def smol_replies(smollm2: Path) -> Iterator[tuple[list[Reply], list[Reply], CountingLib]]:
    params = LoadParams(n_ctx=1024, n_parallel=4, n_threads=2)
    fast = BatchedLlama(smollm2, params)
    counting = CountingLib(fast._lib)
    fast._lib = counting  # the sequences' samplers take the engine's lib when they are made
    reference = BatchedLlama(smollm2, params, grammar_first=True)
    try:
        yield run(fast, CASES), run(reference, CASES), counting
    finally:
        fast.close()
        reference.close()


@pytest.mark.e2e
def test_greedy_constrained_tokens_equal_the_masked_first_ones(
    smol_replies: tuple[list[Reply], list[Reply], CountingLib],
) -> None:
    fast, reference, counting = smol_replies
    for case, mine, theirs in zip(CASES, fast, reference, strict=True):
        assert mine.tokens == theirs.tokens, (case.prompt, mine.text, theirs.text)
        assert (mine.text, mine.finish_reason) == (theirs.text, theirs.finish_reason)
        # Logprobs are still the raw logits' (the grammar masks a copy).
        assert mine.logprobs == theirs.logprobs
        assert len(mine.tokens) >= 5
    # Both ways of the check ran: picks the grammar allowed, and picks it refused.
    assert counting.single > counting.whole > 0


@pytest.mark.e2e
def test_every_greedy_constrained_reply_parses(smol_replies: tuple[list[Reply], list[Reply], CountingLib]) -> None:
    fast, _reference, _counting = smol_replies
    for case, reply in zip(CASES, fast, strict=True):
        assert reply.finish_reason == "stop", (case.prompt, reply.text)
        if case.params.json_schema is not None:
            check(reply.text, case.params.json_schema)
    yes_no = fast[-2].text
    assert yes_no.split(",")[0] in ("yes", "no") and yes_no.endswith("."), yes_no
    assert [line[:2] for line in fast[-1].text.split("\n")] == ["- "] * 3, fast[-1].text


def test_sampled_constrained_replies_of_a_random_model_parse(model_files: dict[str, Path]) -> None:
    """A random model's picks are almost never what a grammar allows: nearly every token goes
    through the refusal and resampling, at temperature 1 with top-k/top-p/min-p in the chain."""
    engine = BatchedLlama(model_files["tiny"], LoadParams(n_ctx=2048, n_parallel=4))
    try:
        cases = [
            Case(
                "Reply in JSON.", SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=seed, json_schema=schema)
            )
            for seed, schema in enumerate(SCHEMAS)
        ]
        for case, reply in zip(cases, run(engine, cases), strict=True):
            assert reply.finish_reason == "stop", (case.params.json_schema, reply.text)
            check(reply.text, case.params.json_schema or {})
        # Unconstrained sequences still sample through llama.cpp's whole chain.
        plain = [Case("Once upon a time", SamplingParams(max_tokens=8, temperature=0), chat=False)]
        assert run(engine, plain)[0].finish_reason == "length"
    finally:
        engine.close()


def test_a_greedy_grammar_on_a_random_model_equals_the_masked_first_path(model_files: dict[str, Path]) -> None:
    params = LoadParams(n_ctx=512, n_parallel=2)
    cases = [
        Case("Once upon a time", SamplingParams(max_tokens=40, temperature=0, grammar=YES_NO), chat=False),
        Case("Reply in JSON.", SamplingParams(max_tokens=MAX_TOKENS, temperature=0, json_schema=SCHEMAS[2])),
    ]
    results = []
    for grammar_first in (False, True):
        engine = BatchedLlama(model_files["tiny"], params, grammar_first=grammar_first)
        try:
            results.append(run(engine, cases))
        finally:
            engine.close()
    fast, reference = results
    assert [r.text for r in fast] == [r.text for r in reference]
    assert json.loads(fast[1].text)["color"] in ("red", "green", "blue")
