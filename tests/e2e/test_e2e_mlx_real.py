"""MLX on a real model: SmolLM2-135M-Instruct's GGUF as an MLX folder (scripts/gguf_to_mlx.py),
checked against llama.cpp on the same weights, then served by a real worker with several jobs
in flight, their texts those of mlx-lm in-process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Stack, running_stack
from gguf_to_mlx import ConversionError, gguf_to_mlx, main
from hostler.client._rqstore import fetch_job

pytestmark = pytest.mark.e2e

pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")

MODEL = "smollm2-mlx"
TEXTS = (
    "Hello world",
    "Numbers 12345 and 3.14 go digit by digit.",
    "Naïve café, über 😀 — done",
    "  two  spaces\tand a tab\n\nnew lines",
    "<|im_start|>user\nHi there<|im_end|>\n",
)
PROMPTS = ("The capital of Italy is", "A message queue is", "Once upon a time")
MAX_TOKENS = 8


def llama(path: Path, **kwargs: Any) -> Any:
    from hostler.worker.engines.llama_cpu import safe_llama_defaults
    from llama_cpp import Llama

    with safe_llama_defaults():
        return Llama(model_path=str(path), verbose=False, **kwargs)


def test_the_tokenizer_is_llama_cpps(smollm2_mlx: Path, smollm2: Path) -> None:
    from hostler.schemas import ChatMessage, LoadParams
    from hostler.worker.engines.llama_batch import BatchedLlama
    from hostler.worker.engines.mlx import MlxEngine

    engine = MlxEngine(smollm2_mlx, LoadParams(n_ctx=512, n_parallel=1))
    batched = BatchedLlama(smollm2, LoadParams(n_ctx=512, n_parallel=1))
    try:
        for text in TEXTS:
            assert engine.prompt_tokens(text) == batched.prompt_tokens(text), text
        chat = [ChatMessage(role="user", content="Summarize in one sentence: Redis keeps data in memory.")]
        tokens, _stops = batched.chat_tokens(chat)
        assert engine.chat_tokens(chat) == tokens
    finally:
        engine.close()
        batched.close()


def test_the_weights_predict_what_llama_cpp_predicts(smollm2_mlx: Path, smollm2: Path) -> None:
    import mlx.core as mx
    from mlx_lm import load

    model, tokenizer = load(str(smollm2_mlx))
    tokens = tokenizer.encode(
        "The quick brown fox jumps over the lazy dog. The capital of Germany is Berlin, and the capital of Italy is"
    )
    mlx_logits = np.array(model(mx.array([tokens]))[0].astype(mx.float32))
    llm = llama(smollm2, n_ctx=512, logits_all=True)
    try:
        llm.eval(tokens)
        llama_logits = np.array(llm.scores[: len(tokens)])
    finally:
        llm.close()
    # The same Q4_1 weights; llama.cpp rounds activations to 8 bits, so logits differ a little.
    # Rotary embedding in the wrong layout agrees at about half the positions.
    agree = (mlx_logits.argmax(axis=1) == llama_logits.argmax(axis=1)).mean()
    assert agree >= 0.9, agree
    assert tokenizer.decode([int(mlx_logits[-1].argmax())]).strip() == "Rome"


def test_what_cannot_be_converted_is_refused(gemma3: Path, model_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="'gemma3' model; only the llama architecture"):
        gguf_to_mlx(gemma3, tmp_path / "out")
    with pytest.raises(ConversionError, match="broken.gguf is not a readable GGUF file"):
        gguf_to_mlx(model_files["broken"], tmp_path / "out")
    # The tiny GGUF is llama with a SentencePiece vocabulary, which tokenizers' BPE cannot rebuild.
    with pytest.raises(ConversionError, match="tokenizer 'llama' with pre-tokenizer"):
        gguf_to_mlx(model_files["tiny"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main([str(model_files["truncated"]), str(tmp_path / "out")]) == 2


@pytest.fixture
def real_mlx_stack(redis_url: str, tmp_path: Path, smollm2_mlx: Path) -> Iterator[Stack]:
    models = tmp_path / "models"
    models.mkdir()
    (models / MODEL).symlink_to(smollm2_mlx, target_is_directory=True)
    with running_stack(redis_url, models, tmp_path / "up.log") as running:
        yield running


def in_process(folder: Path, prompts: tuple[str, ...]) -> list[str]:
    """mlx-lm's own greedy text of each prompt, one after another."""
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(folder))
    return [
        "".join(r.text for r in stream_generate(model, tokenizer, p, max_tokens=MAX_TOKENS, sampler=make_sampler(0.0)))
        for p in prompts
    ]


def test_a_worker_batches_jobs_on_the_real_model(real_mlx_stack: Stack, smollm2_mlx: Path) -> None:
    client = real_mlx_stack.client
    client.load(MODEL, n_ctx=1024, n_parallel=len(PROMPTS) + 1)
    expected = in_process(smollm2_mlx, PROMPTS)
    # One more in flight, streamed and dropped mid-way: the others must not notice.
    doomed = client.stream(MODEL, "The lighthouse keeper's diary, day one:", max_tokens=400, temperature=0)
    assert next(doomed)
    handles = [client.submit(MODEL, p, max_tokens=MAX_TOKENS, temperature=0) for p in PROMPTS]
    closer = threading.Timer(2.0, doomed.close)
    closer.start()
    results = [h.result(timeout=300) for h in handles]
    closer.join()
    assert [r.text for r in results] == expected
    assert "Rome" in results[0].text
    intervals = []
    for handle in handles:
        job = fetch_job(client.connection, handle.id)
        assert job is not None and job.started_at is not None and job.ended_at is not None
        intervals.append((job.started_at, job.ended_at))
    assert max(start for start, _ in intervals) < min(end for _, end in intervals)
    ended = client.job(doomed.job_id).result(timeout=120)
    assert ended.finish_reason == "canceled" and ended.usage.completion_tokens < 400
    [report] = [w for w in client.status().workers if w.model == MODEL]
    assert report.slots == len(PROMPTS) + 1


def test_chats_sharing_a_system_prompt_evaluate_it_once(real_mlx_stack: Stack, smollm2_mlx: Path) -> None:
    client = real_mlx_stack.client
    client.load(MODEL, n_ctx=1024)
    system = {"role": "system", "content": "You answer questions about message queues in one short sentence."}
    first = client.chat(MODEL, [system, {"role": "user", "content": "What is Redis?"}], max_tokens=4, temperature=0)
    before = _report_after(real_mlx_stack, first.usage.prompt_tokens)
    question = [system, {"role": "user", "content": "What is a queue?"}]
    second = client.chat(MODEL, question, max_tokens=4, temperature=0)
    after = _report_after(real_mlx_stack, before.prompt_tokens_received + second.usage.prompt_tokens)
    received = after.prompt_tokens_received - before.prompt_tokens_received
    evaluated = after.prompt_tokens_evaluated - before.prompt_tokens_evaluated
    assert received == second.usage.prompt_tokens
    # Everything up to the user's words came from the first job's cache.
    assert evaluated <= received - 20, (received, evaluated)
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(smollm2_mlx))
    tokens = tokenizer.apply_chat_template(question, add_generation_prompt=True)
    greedy = stream_generate(model, tokenizer, tokens, max_tokens=4, sampler=make_sampler(0.0))
    assert second.text == "".join(r.text for r in greedy)


def _report_after(stack: Stack, received: int) -> Any:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        report = next(w for w in stack.client.status().workers if w.model == MODEL)
        if report.prompt_tokens_received >= received:
            return report
        time.sleep(0.2)
    raise AssertionError("the worker report never counted the second prompt")
