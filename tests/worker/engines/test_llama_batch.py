"""The continuous-batching engine on real llama.cpp: the tiny generated GGUF and SmolLM2-135M."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hostler.schemas import ChatMessage, LoadParams, SamplingParams
from hostler.worker.engines.kept_prompts import common_prefix
from hostler.worker.engines.llama_batch import BatchedLlama, SequenceRequest
from hostler.worker.engines.protocol import ContextExceeded, StepOutput

GREEDY = SamplingParams(max_tokens=32, temperature=0)
PROMPTS = [
    "Once upon a time",
    "The king and the queen",
    "hello world",
    "the cat sat on the",
    "I think that we",
    "water is the",
    "We go home after",
    "A dog and a cat",
]
# A long shared instruction: the prompt cache has something worth reusing.
PREFIX = "Read the story and answer. " + " ".join(["the king said that the queen was in the city"] * 12) + ". "


@dataclass
class Finished:
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    outputs: list[StepOutput] = field(default_factory=list)


def run_all(
    engine: BatchedLlama, requests: Sequence[SequenceRequest], concurrency: int | None = None
) -> list[Finished]:
    """Runs requests through the engine, admitting each as a slot frees (FIFO); results in order."""
    limit = concurrency or engine.n_slots
    results = [Finished() for _ in requests]
    pending = list(range(len(requests)))
    live: dict[int, int] = {}
    while pending or live:
        while pending and len(live) < limit and engine.free_slots:
            index = pending.pop(0)
            live[engine.submit(requests[index])] = index
        for out in engine.step():
            record(results[live[out.seq]], out)
            if out.finish_reason is not None:
                del live[out.seq]
    return results


def record(result: Finished, out: StepOutput) -> None:
    result.outputs.append(out)
    result.text += out.piece
    result.finish_reason = out.finish_reason
    result.prompt_tokens = out.prompt_tokens
    result.completion_tokens = out.completion_tokens
    result.cached_tokens = out.cached_tokens


def texts(results: Sequence[Finished]) -> list[str]:
    return [r.text for r in results]


@pytest.fixture(scope="module")
def tiny(model_files: dict[str, Path]) -> Path:
    return model_files["tiny"]


@pytest.fixture
def engine(tiny: Path) -> Iterator[BatchedLlama]:
    running = BatchedLlama(tiny, LoadParams(n_ctx=512, n_parallel=8))
    yield running
    running.close()


def solo_texts(path: Path, requests: Sequence[SequenceRequest], n_ctx: int = 512) -> list[Finished]:
    """Each request alone in a fresh one-slot engine: no batching, no prompt cache."""
    results = []
    for request in requests:
        single = BatchedLlama(path, LoadParams(n_ctx=n_ctx, n_parallel=1))
        try:
            results.extend(run_all(single, [request]))
        finally:
            single.close()
    return results


def in_process(path: Path, n_ctx: int) -> Any:
    from hostler.worker.engines.llama_cpu import safe_llama_defaults
    from llama_cpp import Llama

    with safe_llama_defaults():
        # flash_attn=True: the worker leaves it to llama.cpp, which turns it on on a CPU.
        return Llama(model_path=str(path), n_ctx=n_ctx, flash_attn=True, verbose=False)


# -- the one-slot contract: llama-cpp-python's own tokens ------------------------------------


def test_one_slot_equals_llama_cpp_python_greedy_and_seeded(tiny: Path) -> None:
    sampled = SamplingParams(
        max_tokens=24,
        temperature=0.9,
        top_k=20,
        top_p=0.9,
        min_p=0.02,
        repeat_penalty=1.1,
        frequency_penalty=0.2,
        presence_penalty=0.1,
        seed=1234,
    )
    llm = in_process(tiny, 512)
    engine = BatchedLlama(tiny, LoadParams(n_ctx=512, n_parallel=1))
    try:
        for prompt in PROMPTS[:4]:
            for params in (GREEDY, sampled):
                llm.reset()
                expected = llm.create_completion(
                    prompt,
                    max_tokens=params.max_tokens,
                    temperature=params.temperature,
                    top_k=params.top_k,
                    top_p=params.top_p,
                    min_p=params.min_p,
                    repeat_penalty=params.repeat_penalty,
                    frequency_penalty=params.frequency_penalty,
                    presence_penalty=params.presence_penalty,
                    seed=params.seed,
                )
                tokens = engine.prompt_tokens(prompt)
                assert tokens == llm.tokenize(prompt.encode(), add_bos=True, special=True)
                [got] = run_all(engine, [SequenceRequest(tokens, params)])
                assert got.text == expected["choices"][0]["text"], (prompt, params)
                assert got.prompt_tokens == expected["usage"]["prompt_tokens"]
                assert got.completion_tokens == expected["usage"]["completion_tokens"]
                assert got.finish_reason == expected["choices"][0]["finish_reason"]
    finally:
        engine.close()
        llm.close()


def test_chat_goes_through_the_template_as_llama_cpp_python(tiny: Path) -> None:
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="hello")]
    llm = in_process(tiny, 512)
    engine = BatchedLlama(tiny, LoadParams(n_ctx=512, n_parallel=2))
    try:
        tokens, stops = engine.chat_tokens(messages)
        assert stops == ("</s>",)  # the template's EOS text, as llama-cpp-python's formatter gives it
        expected = llm.create_chat_completion(
            [m.model_dump() for m in messages],  # type: ignore[misc]
            max_tokens=GREEDY.max_tokens,
            temperature=0,
        )
        [got] = run_all(engine, [SequenceRequest(tokens, GREEDY, stops)])
        assert got.text == expected["choices"][0]["message"]["content"]
        assert got.prompt_tokens == expected["usage"]["prompt_tokens"]
        assert got.completion_tokens == expected["usage"]["completion_tokens"]
        assert engine.count_tokens("hello world") == len(llm.tokenize(b"hello world", add_bos=True, special=True))
    finally:
        engine.close()
        llm.close()


# -- several sequences at once ---------------------------------------------------------------


def test_sequences_decode_together_and_equal_their_solo_texts(engine: BatchedLlama, tiny: Path) -> None:
    requests = [SequenceRequest(engine.prompt_tokens(p), GREEDY) for p in PROMPTS]
    handles = [engine.submit(r) for r in requests]
    assert engine.free_slots == 0 and engine.active == len(PROMPTS)
    with pytest.raises(RuntimeError, match="slots are busy"):
        engine.submit(requests[0])
    first = engine.step()
    # One step evaluated every prompt and sampled every first token: all eight are in flight.
    assert sorted(out.seq for out in first) == sorted(handles)
    assert all(out.completion_tokens == 1 for out in first)
    results = {h: Finished() for h in handles}
    for out in first:
        record(results[out.seq], out)
    while engine.active:
        outputs = engine.step()
        assert len({out.seq for out in outputs}) == len(outputs)
        for out in outputs:
            record(results[out.seq], out)
    got = [results[h] for h in handles]
    assert all(r.finish_reason is not None for r in got)
    assert texts(got) == texts(solo_texts(tiny, requests))
    assert engine.free_slots == engine.n_slots


def test_same_batch_twice_gives_the_same_texts(tiny: Path) -> None:
    runs = []
    for _ in range(2):
        engine = BatchedLlama(tiny, LoadParams(n_ctx=512, n_parallel=4))
        try:
            requests = [SequenceRequest(engine.prompt_tokens(p), GREEDY) for p in PROMPTS * 2]
            first = texts(run_all(engine, requests))
            # The same engine again: now every prompt is in some slot's cache.
            second = run_all(engine, requests)
            assert texts(second) == first
            assert sum(r.cached_tokens for r in second) > 0
            runs.append(first)
        finally:
            engine.close()
    assert runs[0] == runs[1]


def test_a_canceled_sequence_frees_its_slot_and_the_others_finish(engine: BatchedLlama, tiny: Path) -> None:
    requests = [
        SequenceRequest(engine.prompt_tokens(p), SamplingParams(max_tokens=40, temperature=0)) for p in PROMPTS[:4]
    ]
    handles = [engine.submit(r) for r in requests]
    results = {h: Finished() for h in handles}
    for _ in range(5):
        for out in engine.step():
            record(results[out.seq], out)
    victim = handles[1]
    free = engine.free_slots
    engine.cancel(victim)
    assert engine.free_slots == free + 1
    engine.cancel(victim)  # twice, or a handle that ended: nothing happens
    engine.cancel(10_000)
    while engine.active:
        for out in engine.step():
            assert out.seq != victim
            record(results[out.seq], out)
    assert results[victim].completion_tokens == 5 and results[victim].finish_reason is None
    solo = solo_texts(tiny, requests)
    for index, handle in enumerate(handles):
        if handle != victim:
            assert results[handle].text == solo[index].text
    # The freed slot serves a new sequence, under a new handle.
    again = engine.submit(requests[1])
    assert again not in handles
    finished = Finished()
    while engine.active:
        for out in engine.step():
            record(finished, out)
    assert finished.text == solo[1].text


def busy_slots(engine: BatchedLlama) -> list[int]:
    return [slot.index for slot in engine._cache.slots if slot.busy is not None]


def test_sequences_move_into_the_gaps_ended_ones_leave(engine: BatchedLlama, tiny: Path) -> None:
    """Busy slots with gaps between them would cost llama.cpp a physical batch per run of
    consecutive ones; the next step moves sequences into the gaps, and their texts go on as
    if nothing happened."""
    requests = [SequenceRequest(engine.prompt_tokens(p), SamplingParams(max_tokens=40, temperature=0)) for p in PROMPTS]
    handles = [engine.submit(r) for r in requests]
    results = {h: Finished() for h in handles}
    for _ in range(3):
        for out in engine.step():
            record(results[out.seq], out)
    for victim in handles[::2]:
        engine.cancel(victim)
    assert busy_slots(engine) == [1, 3, 5, 7]
    outputs = engine.step()
    assert busy_slots(engine) == [0, 1, 2, 3] or busy_slots(engine) == [4, 5, 6, 7]
    for out in outputs:
        record(results[out.seq], out)
    while engine.active:
        for out in engine.step():
            record(results[out.seq], out)
    solo = solo_texts(tiny, requests)
    for index in range(1, len(requests), 2):
        assert results[handles[index]].text == solo[index].text
        assert results[handles[index]].completion_tokens > 4, "they went on after the move"
    # A moved sequence's old slot kept a copy of its cells: the same prompt again is cached.
    [again] = run_all(engine, [requests[1]])
    assert again.text == solo[1].text and again.cached_tokens == len(requests[1].tokens) - 1


def test_stop_strings_max_tokens_and_extra_stops_end_each_sequence_on_its_own(engine: BatchedLlama, tiny: Path) -> None:
    base = [SequenceRequest(engine.prompt_tokens(p), GREEDY) for p in PROMPTS[:4]]
    solo = solo_texts(tiny, base)
    # A stop string from the middle of sequence 0's own text; sequence 2's from the template.
    words0 = solo[0].text.split()
    words2 = solo[2].text.split()
    stop0, stop2 = " " + words0[3], " " + words2[5]
    requests = [
        SequenceRequest(base[0].tokens, SamplingParams(max_tokens=32, temperature=0, stop=[stop0])),
        SequenceRequest(base[1].tokens, SamplingParams(max_tokens=5, temperature=0)),
        SequenceRequest(base[2].tokens, GREEDY, extra_stops=(stop2,)),
        base[3],
    ]
    got = run_all(engine, requests)
    assert got[0].text == solo[0].text[: solo[0].text.index(stop0)] and got[0].finish_reason == "stop"
    assert got[1].completion_tokens == 5 and got[1].finish_reason == "length"
    assert solo[1].text.startswith(got[1].text)
    assert got[2].text == solo[2].text[: solo[2].text.index(stop2)] and got[2].finish_reason == "stop"
    assert got[3].text == solo[3].text and got[3].finish_reason == solo[3].finish_reason
    # Pieces never show a stop string, not even in part at the end.
    assert all(stop0 not in out.piece for out in got[0].outputs)


def test_context_exceeded_before_any_work(tiny: Path) -> None:
    engine = BatchedLlama(tiny, LoadParams(n_ctx=64, n_parallel=2))
    try:
        too_long = engine.prompt_tokens("the king " * 64)
        assert len(too_long) >= 64
        with pytest.raises(ContextExceeded, match=f"the prompt is {len(too_long)} tokens but the context"):
            engine.submit(SequenceRequest(too_long, GREEDY))
        assert engine.free_slots == 2 and engine.step() == []
        # max_tokens is cut to what the context leaves, as in the one-job engine.
        prompt = engine.prompt_tokens("the king " * 25)
        [got] = run_all(engine, [SequenceRequest(prompt, SamplingParams(max_tokens=500, temperature=0))])
        assert got.completion_tokens <= engine.n_ctx - len(prompt)
    finally:
        engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(SequenceRequest([1, 2, 3], GREEDY))
    engine.close()


# -- the prompt cache ------------------------------------------------------------------------


def test_prompt_cache_reuses_a_finished_slots_prefix(engine: BatchedLlama, tiny: Path) -> None:
    first = SequenceRequest(engine.prompt_tokens(PREFIX + "Who was in the city?"), GREEDY)
    second = SequenceRequest(engine.prompt_tokens(PREFIX + "What did the king say?"), GREEDY)
    [a] = run_all(engine, [first])
    assert a.cached_tokens == 0
    [b] = run_all(engine, [second])
    shared = next(i for i, (x, y) in enumerate(zip(first.tokens, second.tokens, strict=False)) if x != y)
    assert b.cached_tokens == shared > 50
    assert b.prompt_tokens == len(second.tokens)
    # The same prompt again: everything but its last token comes from the cache.
    [c] = run_all(engine, [second])
    assert c.cached_tokens == len(second.tokens) - 1
    uncached = solo_texts(tiny, [first, second])
    assert [a.text, b.text, c.text] == [uncached[0].text, uncached[1].text, uncached[1].text]


def test_prompt_cache_copies_a_busy_slots_prefix(tiny: Path) -> None:
    engine = BatchedLlama(tiny, LoadParams(n_ctx=512, n_parallel=4))
    try:
        first = SequenceRequest(engine.prompt_tokens(PREFIX + "Who was in the city?"), GREEDY)
        second = SequenceRequest(engine.prompt_tokens(PREFIX + "What did the king say?"), GREEDY)
        a = engine.submit(first)
        results = {a: Finished()}
        for out in engine.step():  # the first prompt is in its slot's cells; it generates
            record(results[out.seq], out)
        b = engine.submit(second)
        results[b] = Finished()
        while engine.active:
            for out in engine.step():
                record(results[out.seq], out)
        assert results[b].cached_tokens > 50
        uncached = solo_texts(tiny, [first, second])
        assert [results[a].text, results[b].text] == texts(uncached)
    finally:
        engine.close()


def test_a_short_shared_prefix_is_copied_from_a_busy_slot(tiny: Path) -> None:
    """Copying a slot's cells costs a fraction of evaluating them: a few shared tokens pay."""
    engine = BatchedLlama(tiny, LoadParams(n_ctx=2048, n_parallel=2))
    try:
        first = SequenceRequest(engine.prompt_tokens("Read the story: the king said that the queen sang"), GREEDY)
        second = SequenceRequest(engine.prompt_tokens("Read the story: the king said that a dog ran"), GREEDY)
        shared = common_prefix(first.tokens, second.tokens)
        assert 4 < shared < 32
        a = engine.submit(first)
        results = {a: Finished()}
        for out in engine.step():
            record(results[out.seq], out)
        b = engine.submit(second)  # the other slot is empty: the prefix can only come from a's
        results[b] = Finished()
        while engine.active:
            for out in engine.step():
                record(results[out.seq], out)
        assert results[b].cached_tokens == shared
        assert [results[a].text, results[b].text] == texts(solo_texts(tiny, [first, second], n_ctx=2048))
    finally:
        engine.close()


# -- chunked prefill -------------------------------------------------------------------------


def test_a_long_prompt_does_not_stop_the_others_tokens(tiny: Path) -> None:
    n_batch = 256
    engine = BatchedLlama(tiny, LoadParams(n_ctx=8192, n_batch=n_batch, n_parallel=4))
    try:
        short = [
            SequenceRequest(engine.prompt_tokens(p), SamplingParams(max_tokens=200, temperature=0)) for p in PROMPTS[:3]
        ]
        handles = [engine.submit(r) for r in short]
        results = {h: Finished() for h in handles}
        for _ in range(3):
            for out in engine.step():
                record(results[out.seq], out)
        long_tokens = engine.prompt_tokens(" ".join(PROMPTS) * 160)
        assert len(long_tokens) > 5000
        long = SequenceRequest(long_tokens, SamplingParams(max_tokens=8, temperature=0))
        big = engine.submit(long)
        results[big] = Finished()
        prefill_steps = 0
        while results[big].completion_tokens == 0:
            before = {h: results[h].completion_tokens for h in handles if results[h].finish_reason is None}
            outputs = engine.step()
            prefill_steps += 1
            for out in outputs:
                record(results[out.seq], out)
            # Every short sequence still generating got exactly one token in this step.
            for handle, count in before.items():
                assert results[handle].completion_tokens == count + 1, (handle, prefill_steps)
        chunk = n_batch - len(handles)
        assert prefill_steps == -(-len(long_tokens) // chunk)
        while engine.active:
            for out in engine.step():
                record(results[out.seq], out)
        solo = solo_texts(tiny, [*short, long], n_ctx=8192)
        assert [results[h].text for h in [*handles, big]] == texts(solo)
    finally:
        engine.close()


# -- SmolLM2-135M-Instruct -------------------------------------------------------------------

SMOL_PROMPTS = [
    "Once upon a time",
    "The three most important things about message queues are",
    "def fibonacci(n):",
    "The capital of France is",
    "Here is a recipe for pancakes:",
    "The best way to learn a language is",
]


# One thread in the SmolLM2 tests: the tokens do not depend on it (ggml gives each thread whole
# rows), and a two-thread OpenMP team on a machine whose other programs hold a core runs up to
# ten times slower (see scripts/bench_llama_batch.py).
SMOL = LoadParams(n_ctx=2048, n_parallel=1, n_threads=1)


@pytest.mark.e2e
def test_smollm2_one_slot_equals_llama_cpp_python(smollm2: Path) -> None:
    llm = in_process(smollm2, 2048)
    engine = BatchedLlama(smollm2, SMOL)
    try:
        for prompt in SMOL_PROMPTS:
            llm.reset()
            expected = llm.create_completion(prompt, max_tokens=48, temperature=0)
            [got] = run_all(
                engine, [SequenceRequest(engine.prompt_tokens(prompt), SamplingParams(max_tokens=48, temperature=0))]
            )
            assert got.text == expected["choices"][0]["text"], prompt
            assert got.completion_tokens == expected["usage"]["completion_tokens"]
        messages = [{"role": "user", "content": "Say hello in three words."}]
        llm.reset()
        chat = llm.create_chat_completion(messages, max_tokens=64, temperature=0)  # type: ignore[arg-type]
        tokens, stops = engine.chat_tokens([ChatMessage.model_validate(m) for m in messages])
        [got] = run_all(engine, [SequenceRequest(tokens, SamplingParams(max_tokens=64, temperature=0), stops)])
        assert got.text == chat["choices"][0]["message"]["content"]
        # It ended on its own end-of-generation token, well before max_tokens.
        assert got.finish_reason == "stop" and got.completion_tokens < 64
    finally:
        engine.close()
        llm.close()


def chat_requests(engine: BatchedLlama, count: int, max_tokens: int = 64) -> list[SequenceRequest]:
    """bench_gateway's one-sentence summaries: the load the issue measured."""
    from bench_gateway import PASSAGES, messages

    sampling = SamplingParams(max_tokens=max_tokens, temperature=0)
    requests = []
    for i in range(count):
        conversation = [ChatMessage.model_validate(m) for m in messages(PASSAGES[i % len(PASSAGES)])]
        tokens, stops = engine.chat_tokens(conversation)
        requests.append(SequenceRequest(tokens, sampling, stops))
    return requests


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_smollm2_eight_slots_over_32_prompts(smollm2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def batch(slots: int, passes: int = 1) -> list[list[Finished]]:
        engine = BatchedLlama(smollm2, SMOL.model_copy(update={"n_parallel": slots}))
        try:
            requests = chat_requests(engine, 32)
            return [run_all(engine, requests) for _ in range(passes)]
        finally:
            engine.close()

    [solo] = batch(1)
    first, warm = batch(8, passes=2)
    [again] = batch(8)
    # Run twice, the same batch gives the same texts: on a fresh engine, and on a warm one
    # whose slots already hold every prompt (cached_tokens).
    assert texts(again) == texts(first)
    assert sum(r.cached_tokens for r in warm) > sum(r.cached_tokens for r in first)
    assert texts(warm) == texts(first)
    same = sum(a == b for a, b in zip(texts(first), texts(solo), strict=True))
    with capsys.disabled():
        print(f"\n8 slots: {same}/32 texts equal their one-slot text")
    # Batched matrix products may round differently from one-token ones; a greedy text then
    # forks at a near tie. Measured here: 31/32 (split KV cache). Most must still agree.
    assert same >= 24
    assert all(r.finish_reason in ("stop", "length") for r in first)


# -- threads follow the cores a host agent gives the worker -----------------------------------


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_threads_follow_the_cores_this_process_may_use(tiny: Path) -> None:
    import llama_cpp

    cores = os.sched_getaffinity(0)
    engine = BatchedLlama(tiny, LoadParams(n_ctx=256, n_parallel=1))
    fixed = BatchedLlama(tiny, LoadParams(n_ctx=256, n_parallel=1, n_threads=len(cores)))
    try:
        assert llama_cpp.llama_n_threads(engine._ctx) == len(cores)
        os.sched_setaffinity(0, {min(cores)})
        for running in (engine, fixed):
            running._cores_seen = 0.0  # looked up at most once a second: look at the next step
            running.submit(SequenceRequest(tokens=running.prompt_tokens("Once"), params=SamplingParams(max_tokens=2)))
            running.step()
        assert llama_cpp.llama_n_threads(engine._ctx) == 1
        assert llama_cpp.llama_n_threads(fixed._ctx) == len(cores), "n_threads given at load stays"
    finally:
        os.sched_setaffinity(0, cores)
        engine.close()
        fixed.close()


# -- prompts kept in host memory beside the slots -------------------------------------------


def _run(engine: BatchedLlama, tokens: list[int]) -> tuple[str, int]:
    handle = engine.submit(SequenceRequest(tokens=tokens, params=SamplingParams(max_tokens=12, temperature=0)))
    cached = engine._active[handle].cached
    return "".join(o.piece for o in drain(engine, handle)), cached


def drain(engine: BatchedLlama, handle: int) -> Iterator[StepOutput]:
    while handle in engine._active:
        yield from (o for o in engine.step() if o.seq == handle)


@pytest.mark.parametrize("cache_ram_mib", [None, 0])
def test_a_prompt_cut_from_its_slot_is_kept_and_copied_back(tiny: Path, cache_ram_mib: int | None) -> None:
    engine = BatchedLlama(tiny, LoadParams(n_ctx=512, n_parallel=1, cache_ram_mib=cache_ram_mib))
    try:
        first = engine.prompt_tokens("the farm by the river " * 20)
        other = engine.prompt_tokens("a ship left the harbour " * 20)
        text, cached = _run(engine, first)
        assert cached == 0
        _run(engine, other)  # takes the only slot: the first prompt's cells are cut
        again, cached = _run(engine, first)
        assert again == text
        if cache_ram_mib is None:
            assert cached == len(first) - 1, "every prompt token but the last comes back from host memory"
            assert len(engine._cache.kept) >= 1 and engine._cache.kept.nbytes <= engine._cache.kept.budget_bytes
        else:
            assert cached <= 1 and len(engine._cache.kept) == 0
    finally:
        engine.close()


def test_a_kept_prompt_sparing_a_few_tokens_more_than_a_slot_is_copied_back(tiny: Path) -> None:
    """A kept prompt that holds only a few more of a prompt's tokens than the slot still wins:
    copying its cells back costs less than evaluating even one of them."""
    engine = BatchedLlama(tiny, LoadParams(n_ctx=512, n_parallel=1))
    try:
        first = engine.prompt_tokens(PREFIX + "the farm by the river was green")
        other = engine.prompt_tokens(PREFIX + "a ship left the harbour at dawn")
        later = engine.prompt_tokens(PREFIX + "the farm by the river was dry")
        with_slot = common_prefix(other, later)  # what the slot holds after `other`
        with_kept = common_prefix(first, later)
        assert 0 < with_kept - with_slot < 16, "the point: only a few tokens more"
        _run(engine, first)
        _run(engine, other)  # takes the only slot: the first prompt's cells are kept
        text, cached = _run(engine, later)
        assert cached == with_kept
    finally:
        engine.close()
    fresh = BatchedLlama(tiny, LoadParams(n_ctx=512, n_parallel=1))
    try:
        assert text == _run(fresh, later)[0]
    finally:
        fresh.close()
