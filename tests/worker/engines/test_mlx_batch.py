"""MlxSlots in-process on the tiny generated MLX folder: real mlx-lm batch generation, no Redis.

The serial MlxEngine is the reference: at temperature 0 a one-slot MlxSlots gives its texts
token for token, and so (measured on MLX's CPU backend, 32 of 32 prompts) does a sequence
decoded beside others, joining and leaving mid-flight.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hostler.schemas import ChatMessage, FinishReason, LoadParams, SamplingParams
from hostler.worker.engines.protocol import ContextExceeded, GenerationRequest, NoChatTemplate

pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")

from hostler.worker.engines.mlx import MlxEngine  # noqa: E402
from hostler.worker.engines.mlx_batch import MlxSlots  # noqa: E402

PROMPT = "Hello world, the cat"
PROMPTS = (PROMPT, "Über naïve 123 - the dog", "<s>already starts with BOS", "a", "the quick brown fox " * 6)
GREEDY = SamplingParams(max_tokens=40, temperature=0)
WORDS = "the cat dog runs over a house tree sun road blue green quick lazy fox jumps and then".split()


def never() -> bool:
    return False


def hot(seed: int) -> SamplingParams:
    """Sampling that draws from (nearly) the whole vocabulary: seeds show."""
    return SamplingParams(seed=seed, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, max_tokens=30)


@dataclass
class Outcome:
    text: str = ""
    pieces: list[str] = field(default_factory=list)
    finish: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    steps: int = 0


@dataclass
class Run:
    outcomes: dict[int, Outcome]
    together: int = 0  # steps in which two or more sequences produced text


def prompt(text: str, params: SamplingParams = GREEDY) -> GenerationRequest:
    return GenerationRequest(params=params, prompt=text)


def drain(slots: MlxSlots, handles: Sequence[int], outcomes: dict[int, Outcome] | None = None) -> Run:
    """Steps until every one of handles ended."""
    run = Run(outcomes if outcomes is not None else {})
    for handle in handles:
        run.outcomes.setdefault(handle, Outcome())
    while any(run.outcomes[h].finish is None for h in handles):
        outputs = slots.step()
        assert outputs, "step() returned nothing while sequences were running"
        run.together += sum(1 for o in outputs if o.piece) >= 2
        for output in outputs:
            outcome = run.outcomes[output.seq]
            assert outcome.finish is None, "a sequence was stepped after it ended"
            outcome.steps += 1
            outcome.text += output.piece
            if output.piece:
                outcome.pieces.append(output.piece)
            outcome.finish = output.finish_reason
            outcome.prompt_tokens = output.prompt_tokens
            outcome.completion_tokens = output.completion_tokens
            outcome.cached_tokens = output.cached_tokens
    return run


def run_all(slots: MlxSlots, requests: Sequence[GenerationRequest]) -> list[Outcome]:
    """Runs requests through slots in order, admitting the next one as soon as a slot is free."""
    waiting = list(enumerate(requests))
    handles: dict[int, int] = {}
    outcomes: dict[int, Outcome] = {}
    while waiting or any(outcomes[h].finish is None for h in handles):
        while waiting and slots.free_slots:
            index, request = waiting.pop(0)
            handle = slots.start(request)
            handles[handle] = index
            outcomes[handle] = Outcome()
        for output in slots.step():
            outcome = outcomes[output.seq]
            outcome.text += output.piece
            outcome.finish = output.finish_reason
            outcome.completion_tokens = output.completion_tokens
            outcome.prompt_tokens = output.prompt_tokens
    by_index = {index: outcomes[handle] for handle, index in handles.items()}
    return [by_index[i] for i in range(len(requests))]


@dataclass
class Serial:
    text: str
    finish: FinishReason
    prompt_tokens: int
    completion_tokens: int


def serial(engine: MlxEngine, text: str, params: SamplingParams = GREEDY) -> Serial:
    generation = engine.complete(text, params, never)
    joined = "".join(generation)
    return Serial(joined, generation.finish_reason, generation.prompt_tokens, generation.completion_tokens)


def assert_same(outcome: Outcome, expected: Serial) -> None:
    assert (outcome.text, outcome.finish, outcome.prompt_tokens, outcome.completion_tokens) == (
        expected.text,
        expected.finish,
        expected.prompt_tokens,
        expected.completion_tokens,
    )


@pytest.fixture(scope="module")
def engine(tiny_mlx: Path) -> Iterator[MlxEngine]:
    loaded = MlxEngine(tiny_mlx, LoadParams(n_ctx=256))
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def slots(tiny_mlx: Path) -> Iterator[MlxSlots]:
    loaded = MlxSlots(tiny_mlx, LoadParams(n_ctx=256, n_parallel=4))
    yield loaded
    loaded.close()


def test_slots_come_from_n_parallel(slots: MlxSlots, tiny_mlx: Path) -> None:
    assert slots.n_slots == slots.free_slots == 4 and slots.n_ctx == 256
    assert slots.step() == []
    default = MlxSlots(tiny_mlx, LoadParams())
    assert default.n_slots == LoadParams().n_parallel == 8
    default.close()


def test_one_slot_equals_mlx_engine_at_temperature_0(tiny_mlx: Path, engine: MlxEngine) -> None:
    one = MlxSlots(tiny_mlx, LoadParams(n_ctx=256, n_parallel=1))
    for text in PROMPTS:
        assert one.count_tokens(text) == engine.count_tokens(text)
        for max_tokens in (7, 40):
            params = SamplingParams(max_tokens=max_tokens, temperature=0)
            handle = one.start(prompt(text, params))
            assert one.free_slots == 0
            outcome = drain(one, [handle]).outcomes[handle]
            # The second time the whole prompt but its last token comes from the prompt cache.
            assert_same(outcome, serial(engine, text, params))
            assert one.free_slots == 1
            if max_tokens == 40:
                assert outcome.cached_tokens == outcome.prompt_tokens - 1
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi there")]
    handle = one.start(GenerationRequest(params=GREEDY, messages=messages))
    outcome = drain(one, [handle]).outcomes[handle]
    chat = engine.chat(messages, GREEDY, never)
    assert outcome.text == "".join(chat) and outcome.prompt_tokens == chat.prompt_tokens
    assert outcome.completion_tokens == chat.completion_tokens
    one.close()


def test_sequences_decode_together_and_each_keeps_its_own_text(slots: MlxSlots, engine: MlxEngine) -> None:
    texts = PROMPTS[:4]
    handles = [slots.start(prompt(text)) for text in texts]
    assert slots.free_slots == 0
    with pytest.raises(RuntimeError, match="all 4 slots are busy"):
        slots.start(prompt(PROMPT))
    run = drain(slots, handles)
    assert run.together > 10, "the sequences never produced text in the same step"
    for handle, text in zip(handles, texts, strict=True):
        outcome = run.outcomes[handle]
        assert_same(outcome, serial(engine, text))
        assert len(outcome.pieces) > 1 and outcome.cached_tokens < outcome.prompt_tokens
    assert slots.free_slots == 4


def test_a_prompt_shares_the_kept_cache_of_an_earlier_job(tiny_mlx: Path, engine: MlxEngine) -> None:
    shared = "the cat sees the dog and the bird over the house by the river " * 3
    first, second = shared + "one two three", shared + "red blue green"
    own = engine.count_tokens(shared)
    for budget, hit in ((None, True), (0, False)):
        kept = MlxSlots(tiny_mlx, LoadParams(n_ctx=256, n_parallel=2, cache_ram_mib=budget))
        try:
            a = kept.start(prompt(first))
            assert drain(kept, [a]).outcomes[a].cached_tokens == 0
            b = kept.start(prompt(second))
            outcome = drain(kept, [b]).outcomes[b]
            # The shared text's tokens came from the first job's cache (a token may merge
            # across the seam), and the text is the one evaluating everything gives.
            assert (outcome.cached_tokens >= own - 1) is hit and (outcome.cached_tokens == 0) is not hit
            assert_same(outcome, serial(engine, second))
            # A sequence a stop string ended (taken out of the batch here) keeps its cache too.
            third = second + " again"
            stopper = SamplingParams(max_tokens=40, temperature=0, stop=[serial(engine, third).text[10:14]])
            c = kept.start(prompt(third, stopper))
            assert drain(kept, [c]).outcomes[c].finish == "stop"
            d = kept.start(prompt(third + " and again"))
            assert (drain(kept, [d]).outcomes[d].cached_tokens >= engine.count_tokens(third) - 1) is hit
        finally:
            kept.close()


def test_the_same_batch_twice_gives_the_same_texts(slots: MlxSlots) -> None:
    texts = [PROMPT, PROMPTS[1], PROMPTS[4]]
    first = run_all(slots, [prompt(t) for t in texts])
    second = run_all(slots, [prompt(t) for t in texts])
    assert [o.text for o in first] == [o.text for o in second]


def test_a_canceled_sequence_frees_its_slot_and_the_others_go_on(slots: MlxSlots, engine: MlxEngine) -> None:
    texts = [PROMPT, PROMPTS[1], PROMPTS[4]]
    handles = [slots.start(prompt(t)) for t in texts]
    outcomes: dict[int, Outcome] = {h: Outcome() for h in handles}
    for _ in range(6):
        for output in slots.step():
            outcomes[output.seq].text += output.piece
    assert all(outcomes[h].text for h in handles), "every sequence generates before the cancel"
    slots.cancel(handles[1])
    assert slots.free_slots == 2
    slots.cancel(handles[1])  # twice, or an unknown handle: nothing happens
    slots.cancel(10_000)
    # The freed slot takes a new job at once, while the others are mid-flight.
    late = slots.start(prompt(PROMPTS[3]))
    run = drain(slots, [handles[0], handles[2], late], outcomes)
    assert run.outcomes[handles[1]].finish is None, "the canceled sequence was stepped again"
    assert_same(run.outcomes[handles[0]], serial(engine, texts[0]))
    assert_same(run.outcomes[handles[2]], serial(engine, texts[2]))
    assert_same(run.outcomes[late], serial(engine, PROMPTS[3]))
    # Canceled while its prompt is still pending: nothing of it is ever stepped.
    pending = slots.start(prompt(PROMPT))
    slots.cancel(pending)
    assert slots.free_slots == 4 and slots.step() == []


def test_stops_and_max_tokens_per_sequence(slots: MlxSlots, engine: MlxEngine) -> None:
    full = serial(engine, PROMPT).text
    early, late = full[5:8], full[len(full) // 2 : len(full) // 2 + 3]
    assert full.index(early) < full.index(late)
    params = [
        SamplingParams(max_tokens=40, temperature=0, stop=[early]),
        SamplingParams(max_tokens=40, temperature=0, stop=[late, "no such stop"]),
        SamplingParams(max_tokens=3, temperature=0),
        GREEDY,
    ]
    handles = [slots.start(prompt(PROMPT, p)) for p in params]
    run = drain(slots, handles)
    cut_early, cut_late, short, whole = (run.outcomes[h] for h in handles)
    assert (cut_early.text, cut_early.finish) == (full[: full.index(early)], "stop")
    assert (cut_late.text, cut_late.finish) == (full[: full.index(late)], "stop")
    assert not any(early in piece for piece in cut_early.pieces)
    assert (short.finish, short.completion_tokens) == ("length", 3)
    assert full.startswith(short.text)
    assert_same(whole, serial(engine, PROMPT))
    # The stopped sequences ended early: the whole one outlived them.
    assert cut_early.steps < cut_late.steps < whole.steps


def test_a_long_prompt_is_evaluated_in_chunks_beside_a_stream(tiny_mlx: Path, engine: MlxEngine) -> None:
    chunked = MlxSlots(tiny_mlx, LoadParams(n_ctx=512, n_batch=16, n_parallel=2))
    streaming = chunked.start(prompt(PROMPT, SamplingParams(max_tokens=60, temperature=0)))
    for _ in range(3):
        chunked.step()
    long_text = " ".join(WORDS * 8)
    assert engine.count_tokens(long_text) > 100
    long = chunked.start(prompt(long_text, SamplingParams(max_tokens=5, temperature=0)))
    prefill_steps = 0
    while True:
        outputs = {o.seq: o for o in chunked.step()}
        # The stream gets its token in every step while the long prompt is evaluated.
        assert streaming in outputs and outputs[streaming].completion_tokens > 0
        if outputs[long].completion_tokens:
            break
        assert outputs[long].piece == "" and outputs[long].finish_reason is None
        prefill_steps += 1
    assert prefill_steps >= 100 // 16
    chunked.close()  # with both sequences in flight
    chunked.close()
    with pytest.raises(RuntimeError, match="closed"):
        chunked.step()


def test_context_exceeded_before_any_work(tiny_mlx: Path) -> None:
    small = MlxSlots(tiny_mlx, LoadParams(n_ctx=32, n_parallel=2))
    with pytest.raises(ContextExceeded, match=r"the prompt is \d+ tokens but the context of 'tiny-mlx' is 32 tokens"):
        small.start(prompt(PROMPT * 10))
    assert small.free_slots == 2 and small.step() == []
    n = small.count_tokens(PROMPT)
    handle = small.start(prompt(PROMPT, SamplingParams(max_tokens=500, temperature=0)))
    outcome = drain(small, [handle]).outcomes[handle]
    assert 0 < outcome.completion_tokens <= 32 - n
    small.close()


def test_chat_without_a_template_fails_at_start(tiny_mlx: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_mlx, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    without = MlxSlots(base, LoadParams(n_parallel=2))
    with pytest.raises(NoChatTemplate, match="'base' has no chat template"):
        without.start(GenerationRequest(params=GREEDY, messages=[ChatMessage(role="user", content="hi")]))
    assert without.free_slots == 2
    without.close()


def test_seeds_and_penalties_are_per_sequence(slots: MlxSlots, engine: MlxEngine) -> None:
    seeded = [hot(5), hot(6)]
    penalised = SamplingParams(max_tokens=40, temperature=0, repeat_penalty=1.5)
    requests = [prompt(PROMPT, seeded[0]), prompt(PROMPTS[1], seeded[1]), prompt(PROMPT, penalised), prompt(PROMPT)]
    first = run_all(slots, requests)
    # A seed draws from its sequence's own key: the text MlxEngine gives with that seed,
    # whatever is decoded beside it.
    assert first[0].text == serial(engine, PROMPT, seeded[0]).text
    assert first[1].text == serial(engine, PROMPTS[1], seeded[1]).text
    assert first[2].text == serial(engine, PROMPT, penalised).text != first[3].text
    assert first[3].text == serial(engine, PROMPT).text
    alone = run_all(slots, [prompt(PROMPT, seeded[0])])
    assert alone[0].text == first[0].text
    others = run_all(slots, [prompt(PROMPT, hot(s)) for s in range(7, 11)])
    assert {o.text for o in others} - {first[0].text}, "different seeds never changed the sampled text"
    # Filters as make_sampler applies them, and a top_k over the vocabulary keeps every token.
    filtered = SamplingParams(seed=3, temperature=0.9, top_k=20, top_p=0.9, min_p=0.05, max_tokens=30)
    assert run_all(slots, [prompt(PROMPT, filtered)])[0].text == serial(engine, PROMPT, filtered).text
    wide = SamplingParams(seed=3, temperature=0.9, top_k=100_000, top_p=1.0, min_p=0.0, max_tokens=10)
    assert run_all(slots, [prompt(PROMPT, wide)])[0].completion_tokens > 0


def test_32_prompts_in_8_slots_equal_their_one_slot_texts(tiny_mlx: Path) -> None:
    import random

    rng = random.Random(1)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(32)]
    requests = [prompt(t, SamplingParams(max_tokens=32, temperature=0)) for t in texts]
    one = MlxSlots(tiny_mlx, LoadParams(n_ctx=256, n_parallel=1))
    alone = [o.text for o in run_all(one, requests)]
    one.close()
    eight = MlxSlots(tiny_mlx, LoadParams(n_ctx=256, n_parallel=8))
    batched = [o.text for o in run_all(eight, requests)]
    again = [o.text for o in run_all(eight, requests)]
    eight.close()
    assert batched == again
    agree = sum(a == b for a, b in zip(alone, batched, strict=True))
    assert agree == 32, f"{agree} of 32 batched texts equal their one-slot text"


def test_the_factory_batches_where_mlx_lm_can_else_runs_one_job_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from hostler.worker.engines import available
    from hostler.worker.engines.mlx_batch import batch_generation_unavailable

    available._availability.cache_clear()
    monkeypatch.delenv(available.DISABLE_ENV, raising=False)
    try:
        assert batch_generation_unavailable() is None
        assert available.engine_factory("mlx") is MlxSlots

        class OldBatchGenerator:  # mlx-lm 0.28 to 0.31.1: one sampler for the whole batch
            def insert(self, prompts: list[list[int]], max_tokens: list[int] | None = None) -> list[int]:
                return []

        # The module, not mlx_lm.generate: mlx_lm's generate() function hides it as an attribute.
        monkeypatch.setattr(importlib.import_module("mlx_lm.generate"), "BatchGenerator", OldBatchGenerator)
        assert "predates per-sequence samplers" in (batch_generation_unavailable() or "")
        assert available.engine_factory("mlx") is MlxEngine
    finally:
        available._availability.cache_clear()
