"""Embeddings from GGUF models (engines/llama_embed.py) against llama-cpp-python in-process, on tiny GGUFs.

SmolLM2 is compared in test_llama_embed_e2e.py; the whole path (client, worker, gateway) in
tests/worker/gateway/test_embeddings_e2e.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hostler.schemas import LoadParams
from hostler.worker.engines.llama_embed import model_is_causal, model_pooling
from hostler.worker.engines.llama_slots import LlamaSlots
from hostler.worker.engines.protocol import ContextExceeded, EmbeddingOutput, EmbeddingsUnsupported, InvalidInput
from hostler.worker.memory import embedding as embedding_memory
from hostler.worker.memory.embedding import LOGITS_BYTES, MIN_BUDGET, packing_budget
from make_tiny_gguf import write_tiny_gguf

TEXTS = [
    "Once upon a time",
    "The king and the queen went to the city",
    "hello world",
    "the cat sat on the mat and the dog sat on the cat",
    "water",
]
LLAMA_POOLING = {"mean": 1, "cls": 2, "last": 3}


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def in_process(path: Path, pooling: str | None, n_ctx: int = 512) -> Any:
    """llama-cpp-python's Llama(embedding=True): the model's own pooling unless one is named."""
    import llama_cpp
    from hostler.worker.engines.llama_cpu import safe_llama_defaults

    kwargs = {} if pooling is None else {"pooling_type": LLAMA_POOLING[pooling]}
    with safe_llama_defaults():
        return llama_cpp.Llama(model_path=str(path), embedding=True, n_ctx=n_ctx, verbose=False, **kwargs)


def embed(engine: LlamaSlots, inputs: Sequence[str | Sequence[int]], dimensions: int | None = None) -> EmbeddingOutput:
    task = engine.start_embedding(inputs, dimensions)
    steps = 0
    while not task.done:
        task.step()
        steps += 1
        assert steps <= len(inputs), "every step embeds at least one input"
    return task.result()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny llama without a pooling type (as generative models are), and with each one declared."""
    base = tmp_path_factory.mktemp("embed-models")
    models = {"none": write_tiny_gguf(base / "tiny.gguf", seed=3)}
    for name, value in LLAMA_POOLING.items():
        models[name] = write_tiny_gguf(base / f"tiny-{name}.gguf", seed=3, pooling_type=value)
        # Bidirectional attention, as BERT-like embedding models have: llama.cpp pools whole inputs.
        models[f"{name}-bidirectional"] = write_tiny_gguf(
            base / f"tiny-{name}-bi.gguf", seed=3, pooling_type=value, causal=False
        )
    return models


@pytest.fixture
def engine(tiny_models: dict[str, Path]) -> Iterator[LlamaSlots]:
    running = LlamaSlots(tiny_models["none"], LoadParams(n_ctx=256, n_parallel=2))
    yield running
    running.close()


@pytest.mark.parametrize(
    "declared", ["none", "mean", "cls", "last", "mean-bidirectional", "cls-bidirectional", "last-bidirectional"]
)
def test_vectors_equal_llama_cpp_python_with_the_models_own_pooling(
    tiny_models: dict[str, Path], declared: str
) -> None:
    path = tiny_models[declared]
    engine = LlamaSlots(path, LoadParams(n_ctx=256, n_parallel=2))
    try:
        output = embed(engine, TEXTS)
    finally:
        engine.close()
    # A model that declares no pooling is pooled by mean; llama-cpp-python needs to be told so,
    # or it returns one vector per token.
    expected_pooling = "mean" if declared == "none" else declared.removesuffix("-bidirectional")
    assert output.pooling == expected_pooling
    llm = in_process(path, "mean" if declared == "none" else None)
    try:
        for text, vector in zip(TEXTS, output.vectors, strict=True):
            reference = llm.embed(text, normalize=True)
            assert len(vector) == len(reference) == output.dimensions
            assert cosine(vector, reference) >= 0.9999, (declared, text)
            assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
        # create_embedding counts the same prompt tokens.
        assert llm.create_embedding(TEXTS)["usage"]["prompt_tokens"] == output.prompt_tokens
    finally:
        llm.close()


def test_token_ids_embed_as_their_text(engine: LlamaSlots, tiny_models: dict[str, Path]) -> None:
    llm = in_process(tiny_models["none"], "mean")
    try:
        tokens = llm.tokenize(TEXTS[1].encode())
    finally:
        llm.close()
    from_text, from_tokens = embed(engine, [TEXTS[1]]), embed(engine, [tokens])
    assert from_tokens.prompt_tokens == from_text.prompt_tokens == len(tokens)
    assert cosine(from_text.vectors[0], from_tokens.vectors[0]) >= 0.99999


def test_packed_decodes_equal_one_input_at_a_time(engine: LlamaSlots) -> None:
    together = embed(engine, TEXTS * 4)
    for index, text in enumerate(TEXTS):
        alone = embed(engine, [text])
        assert cosine(together.vectors[index], alone.vectors[0]) >= 0.9999
        assert cosine(together.vectors[index + len(TEXTS)], alone.vectors[0]) >= 0.9999


def test_dimensions_keep_the_first_ones_normalised_again(engine: LlamaSlots) -> None:
    full = embed(engine, TEXTS)
    short = embed(engine, TEXTS, dimensions=8)
    assert short.dimensions == 8
    for whole, cut in zip(full.vectors, short.vectors, strict=True):
        head = np.asarray(whole[:8])
        assert np.allclose(cut, head / np.linalg.norm(head), atol=1e-6)
        assert np.linalg.norm(cut) == pytest.approx(1.0, abs=1e-6)


def test_dimensions_larger_than_the_model_are_refused_before_any_work(engine: LlamaSlots) -> None:
    size = embed(engine, ["a"]).dimensions
    with pytest.raises(InvalidInput, match=f"dimensions {size + 1} is larger than .* embedding size {size}"):
        engine.start_embedding(["a"], size + 1)


def test_an_input_over_the_context_names_its_index_and_both_lengths(engine: LlamaSlots) -> None:
    long = " ".join(["the king said that"] * 200)
    with pytest.raises(ContextExceeded, match=r"input 2 is \d+ tokens but model 'tiny'.s context is 256 tokens"):
        engine.start_embedding(["short", "also short", long], None)


def test_token_ids_outside_the_vocabulary_are_refused(engine: LlamaSlots) -> None:
    with pytest.raises(InvalidInput, match="input 1 has token ids outside"):
        engine.start_embedding([[1, 2], [1, 10**6]], None)


@pytest.mark.parametrize("declared", ["mean", "cls", "last"])
def test_a_long_input_spans_decodes_of_the_budget_and_all_is_freed_after(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, declared: str
) -> None:
    monkeypatch.setattr(embedding_memory, "LOGITS_BYTES", 1)  # the smallest budget: MIN_BUDGET tokens a decode
    path = tiny_models[declared]
    engine = LlamaSlots(path, LoadParams(n_ctx=512, n_parallel=1))
    llm = in_process(path, None, n_ctx=512)
    try:
        words = llm.tokenize(TEXTS[3].encode(), add_bos=False)
        long = [llm.token_bos(), *(words * (300 // len(words) + 1))[:299]]
        task = engine.start_embedding(["short", long, "short again"], None)
        embedder = engine._embedder
        assert embedder is not None and embedder.budget == MIN_BUDGET
        steps = 0
        while not task.done:
            task.step()
            steps += 1
            if not task.done:
                assert embedder._cells == 512, "cells for the long input and one budget more"
        assert steps >= 300 // MIN_BUDGET, "no decode held more than the budget"
        assert embedder._context is None, "the context goes when the last task ends"
        vectors = task.result().vectors
        assert cosine(vectors[0], llm.embed("short", normalize=True)) >= 0.9999
        assert cosine(vectors[2], llm.embed("short again", normalize=True)) >= 0.9999
        # llama-cpp-python embeds the 300 tokens in one decode: the same vector.
        assert cosine(vectors[1], llm.embed(llm.detokenize(long[1:]).decode(), normalize=True)) >= 0.9999
    finally:
        llm.close()
        engine.close()


def test_a_bidirectional_models_long_input_goes_whole_in_a_decode_of_its_own(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedding_memory, "LOGITS_BYTES", 1)
    path = tiny_models["mean-bidirectional"]
    engine = LlamaSlots(path, LoadParams(n_ctx=512, n_parallel=1))
    llm = in_process(path, None, n_ctx=512)
    try:
        long = " ".join([TEXTS[3]] * 12)
        task = engine.start_embedding(["a", "b", long, "c"], None)
        steps = 0
        while not task.done:
            task.step()
            steps += 1
        assert steps == 3, "'a' and 'b' packed, then the long one alone, then 'c'"
        for vector, text in zip(task.result().vectors, ["a", "b", long, "c"], strict=True):
            assert cosine(vector, llm.embed(text, normalize=True)) >= 0.9999
    finally:
        llm.close()
        engine.close()


def test_pooling_and_budget_rules() -> None:
    assert model_is_causal({"general.architecture": "llama"})
    assert not model_is_causal({"general.architecture": "bert", "bert.attention.causal": "false"})
    assert model_pooling({"general.architecture": "llama"}) == "mean"
    assert model_pooling({"general.architecture": "bert", "bert.pooling_type": "2"}) == "cls"
    assert model_pooling({"general.architecture": "qwen3", "qwen3.pooling_type": "3"}) == "last"
    assert model_pooling({"general.architecture": "llama", "llama.pooling_type": "0"}) == "mean"
    with pytest.raises(EmbeddingsUnsupported, match="reranker"):
        model_pooling({"general.architecture": "bert", "bert.pooling_type": "4"})
    # Gemma 3's 262k vocabulary: 16 tokens a decode keep its logits within LOGITS_BYTES; SmolLM2's 49k: 85.
    assert packing_budget(262_144, 512) == LOGITS_BYTES // (4 * 262_144) == MIN_BUDGET
    assert packing_budget(49_152, 512) == 85
    assert packing_budget(1_000, 512) == 512
    assert packing_budget(1_000, 100) == 100
    assert packing_budget(10_000_000, 512) == MIN_BUDGET


def test_mlx_refuses_embeddings_by_name() -> None:
    from hostler.worker.engines.mlx_batch import MlxSlots

    slots = object.__new__(MlxSlots)  # no model needed: the refusal comes before any
    with pytest.raises(EmbeddingsUnsupported, match="the MLX engine does not compute embeddings.*GGUF"):
        slots.start_embedding(["a text"], None)
