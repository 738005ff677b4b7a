"""End to end on the two real small models: SmolLM2-135M-Instruct (chat) and Gemma 3 270M (base)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Stack, start_stack, stop_stack
from hostler import JobFailed

pytestmark = pytest.mark.e2e

PROMPTS = ["Once upon a time", "The three most important things about message queues are"]


@pytest.fixture
def real_stack(redis_url: str, tmp_path: Path, smollm2: Path, gemma3: Path) -> Iterator[Stack]:
    models = tmp_path / "models"
    models.mkdir()
    (models / "smollm2-135m.gguf").symlink_to(smollm2)
    (models / "gemma3-270m.gguf").symlink_to(gemma3)
    running = start_stack(redis_url, models, tmp_path / "up.log")
    try:
        yield running
    finally:
        stop_stack(running)


def in_process(path: Path) -> Any:
    from hostler.worker.engines.llama_cpu import safe_llama_defaults
    from llama_cpp import Llama

    with safe_llama_defaults():
        # flash_attn=True: the worker leaves it to llama.cpp, which turns it on on a CPU.
        return Llama(model_path=str(path), n_ctx=2048, flash_attn=True, verbose=False)


def test_queued_text_equals_in_process_text_at_temperature_0(real_stack: Stack, smollm2: Path, gemma3: Path) -> None:
    for model, path in (("smollm2-135m", smollm2), ("gemma3-270m", gemma3)):
        real_stack.client.load(model, n_ctx=2048)
        llm = in_process(path)
        try:
            for prompt in PROMPTS:
                llm.reset()  # a fresh context, as every queued job gets
                expected = llm.create_completion(prompt, max_tokens=48, temperature=0, seed=7)
                queued = real_stack.client.complete(model, prompt, max_tokens=48, temperature=0, seed=7)
                assert queued.text == expected["choices"][0]["text"], (model, prompt)
                assert queued.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
                assert queued.usage.completion_tokens == expected["usage"]["completion_tokens"]
                streamed = "".join(real_stack.client.stream(model, prompt, max_tokens=48, temperature=0, seed=7))
                assert streamed == queued.text
        finally:
            llm.close()


def test_smollm2_chat_uses_its_template_like_llama_cpp(real_stack: Stack, smollm2: Path) -> None:
    messages = [{"role": "user", "content": "Summarize in one sentence: Redis is an in-memory data store."}]
    queued = real_stack.client.chat("smollm2-135m", messages, max_tokens=40, temperature=0)
    llm = in_process(smollm2)
    try:
        expected = llm.create_chat_completion(messages, max_tokens=40, temperature=0)  # type: ignore[arg-type]
    finally:
        llm.close()
    assert queued.text.strip()
    assert queued.text == expected["choices"][0]["message"]["content"]
    assert queued.usage.prompt_tokens == expected["usage"]["prompt_tokens"]


def test_gemma_is_completion_only(real_stack: Stack) -> None:
    assert real_stack.client.complete("gemma3-270m", "The capital of France is", max_tokens=8, temperature=0).text
    with pytest.raises(JobFailed) as caught:
        real_stack.client.chat("gemma3-270m", [{"role": "user", "content": "hi"}])
    assert caught.value.code == "no_chat_template"


def test_two_models_are_served_side_by_side(real_stack: Stack) -> None:
    a = real_stack.client.stream("smollm2-135m", "Hello", max_tokens=16, temperature=0)
    b = real_stack.client.stream("gemma3-270m", "Hello", max_tokens=16, temperature=0)
    assert "".join(a) and "".join(b)
    assert {w.model for w in real_stack.client.status().workers} == {"smollm2-135m", "gemma3-270m"}
