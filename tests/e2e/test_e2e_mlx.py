"""End to end on real processes: `hostler up`, real workers, real mlx-lm on a tiny generated MLX
folder, served beside the tiny GGUFs, with the same client calls, events and errors."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Stack, start_stack, stop_stack
from hostler import ContextExceeded, JobFailed, NoCapacity

pytestmark = pytest.mark.e2e

pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")

MODEL = "tiny-mlx"
PROMPT = "Hello world, the cat"


@pytest.fixture
def mlx_models_dir(models_dir: Path, tiny_mlx: Path) -> Path:
    # Linked, as an import would: the tiny GGUFs and the MLX folder side by side.
    (models_dir / MODEL).symlink_to(tiny_mlx, target_is_directory=True)
    return models_dir


@pytest.fixture
def mlx_stack(redis_url: str, mlx_models_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    running = start_stack(redis_url, mlx_models_dir, tmp_path / "up.log")
    try:
        yield running
    finally:
        stop_stack(running)


def test_complete_stream_and_count_agree(mlx_stack: Stack) -> None:
    client = mlx_stack.client
    result = client.complete(MODEL, PROMPT, max_tokens=24, temperature=0)
    assert result.text and result.usage.completion_tokens > 0
    assert result.finish_reason in ("length", "stop")
    pieces = list(client.stream(MODEL, PROMPT, max_tokens=24, temperature=0))
    assert len(pieces) > 1 and "".join(pieces) == result.text
    assert client.count_tokens(MODEL, PROMPT) == result.usage.prompt_tokens


def test_token_count_is_mlx_lms_and_generation_equals_mlx_lm_in_process(mlx_stack: Stack, tiny_mlx: Path) -> None:
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(tiny_mlx))
    client = mlx_stack.client
    for prompt in (PROMPT, "Über naïve 123 - the dog", "<s>already starts with BOS"):
        # BOS as the tokenizer adds it, and not twice when the prompt already has it.
        assert client.count_tokens(MODEL, prompt) == len(
            tokenizer.encode(prompt, add_special_tokens=not prompt.startswith("<s>"))
        )
        for max_tokens in (7, 40):
            expected = mlx_lm.generate(model, tokenizer, prompt, max_tokens=max_tokens)
            assert client.complete(MODEL, prompt, max_tokens=max_tokens, temperature=0).text == expected
    assert client.count_tokens(MODEL, PROMPT) == 1 + len(tokenizer.encode(PROMPT, add_special_tokens=False))


def test_chat_uses_the_tokenizers_template(mlx_stack: Stack, tiny_mlx: Path) -> None:
    import mlx_lm

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    result = mlx_stack.client.chat(MODEL, messages, max_tokens=16, temperature=0)
    streamed = "".join(mlx_stack.client.chat(MODEL, messages, stream=True, max_tokens=16, temperature=0))
    assert streamed == result.text
    model, tokenizer = mlx_lm.load(str(tiny_mlx))
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert result.usage.prompt_tokens == len(prompt)
    assert result.text == mlx_lm.generate(model, tokenizer, prompt, max_tokens=16)


def test_stop_strings_sampling_and_seeds(mlx_stack: Stack) -> None:
    client = mlx_stack.client
    full = client.complete(MODEL, PROMPT, max_tokens=30, temperature=0).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = client.complete(MODEL, PROMPT, max_tokens=30, temperature=0, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == full[: full.index(stop)]
    assert "".join(client.stream(MODEL, PROMPT, max_tokens=30, temperature=0, stop=stop)) == cut.text
    sampled = {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "max_tokens": 30}
    one = client.complete(MODEL, PROMPT, seed=7, **sampled).text  # type: ignore[arg-type]
    assert client.complete(MODEL, PROMPT, seed=7, **sampled).text == one  # type: ignore[arg-type]
    others = {client.complete(MODEL, PROMPT, seed=s, **sampled).text for s in range(8, 12)}  # type: ignore[arg-type]
    assert others - {one}, "different seeds never changed the sampled text"
    penalised = client.complete(MODEL, PROMPT, max_tokens=30, temperature=0, repeat_penalty=1.5).text
    assert penalised != full


def test_load_params_context_limit_and_unload(mlx_stack: Stack) -> None:
    client = mlx_stack.client
    loaded = client.load(MODEL, n_ctx=64)
    assert loaded.params.n_ctx == 64
    prompt = " ".join(["the cat runs"] * 40)
    n = client.count_tokens(MODEL, prompt)
    assert n > 64
    with pytest.raises(ContextExceeded) as caught:
        client.complete(MODEL, prompt, max_tokens=4)
    assert f"the prompt is {n} tokens but the context of {MODEL!r} is 64 tokens (n_ctx)" in caught.value.message
    # A prompt that fits gets at most the rest of the context.
    short = " ".join(["the cat runs"] * 4)
    m = client.count_tokens(MODEL, short)
    assert m < 64
    result = client.complete(MODEL, short, max_tokens=200, temperature=0)
    assert result.usage.completion_tokens <= 64 - m
    assert [x.loaded for x in client.models() if x.id == MODEL] == [True]
    assert client.unload(MODEL).was_loaded
    deadline = time.monotonic() + 15
    while mlx_stack.worker_pids(MODEL) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mlx_stack.worker_pids(MODEL) == []
    # A new worker loads with the default context again: the long prompt now fits.
    assert client.complete(MODEL, prompt, max_tokens=2).usage.prompt_tokens == n


def test_gguf_and_mlx_served_side_by_side(mlx_stack: Stack) -> None:
    client = mlx_stack.client
    listed = {m.id: m for m in client.models()}
    assert listed[MODEL].engine == "mlx" and listed["tiny"].engine == "llama"
    assert listed[MODEL].available and listed[MODEL].chat_template
    assert listed[MODEL].estimate_bytes and listed[MODEL].size_bytes > 0
    with ThreadPoolExecutor(4) as pool:
        jobs = [
            pool.submit(client.complete, model, PROMPT, max_tokens=8, temperature=0) for model in [MODEL, "tiny"] * 2
        ]
        texts = [job.result(timeout=120).text for job in jobs]
    assert texts[0] == texts[2] and texts[1] == texts[3] and texts[0] != texts[1]
    engines = {w.model for w in client.status().workers}
    assert {MODEL, "tiny"} <= engines


def test_mlx_chat_without_template_is_a_clear_error(models_dir: Path, tmp_path: Path, redis_url: str) -> None:
    from make_tiny_mlx import write_tiny_mlx

    write_tiny_mlx(models_dir / "base-mlx", chat_template=None, seed=1)
    stack = start_stack(redis_url, models_dir, tmp_path / "up.log")
    try:
        assert [m.chat_template for m in stack.client.models() if m.id == "base-mlx"] == [False]
        with pytest.raises(JobFailed) as caught:
            stack.client.chat("base-mlx", [{"role": "user", "content": "hi"}])
        assert caught.value.code == "no_chat_template" and "base-mlx" in caught.value.message
        assert stack.client.complete("base-mlx", PROMPT, max_tokens=3).usage.completion_tokens > 0
    finally:
        stop_stack(stack)


def test_without_mlx_the_model_is_listed_unavailable_and_its_jobs_fail(
    mlx_models_dir: Path, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator's switch stands in for a host where mlx-lm is not installed: the host agent
    # reports the reason exactly as it would for a missing library.
    monkeypatch.setenv("HOSTLER_DISABLE_ENGINES", "mlx")
    stack = start_stack(redis_url, mlx_models_dir, tmp_path / "up.log")
    try:
        listed = {m.id: m for m in stack.client.models()}
        assert not listed[MODEL].available
        reason = listed[MODEL].unavailable_reason
        assert reason is not None and "HOSTLER_DISABLE_ENGINES" in reason
        assert listed["tiny"].available and listed["tiny"].unavailable_reason is None
        ls = subprocess.run(
            [sys.executable, "-m", "hostler.worker", "models", "ls", "--redis", redis_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        [row] = [line for line in ls.splitlines() if line.startswith(MODEL)]
        assert f"unavailable: {reason}" in row
        started = time.monotonic()
        with pytest.raises(NoCapacity) as caught:
            stack.client.complete(MODEL, PROMPT, max_tokens=4, timeout=30)
        assert time.monotonic() - started < 10
        assert f"testhost: cannot run it ({reason})" in caught.value.message
        assert stack.worker_pids(MODEL) == []
        # The GGUF beside it is served as ever.
        assert stack.client.complete("tiny", PROMPT, max_tokens=2).usage.completion_tokens == 2
    finally:
        stop_stack(stack)


def test_a_worker_refuses_an_engine_its_host_cannot_run(mlx_models_dir: Path, redis_url: str) -> None:
    env = {"HOSTLER_DISABLE_ENGINES": "mlx", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "hostler.worker", "worker", "--model", MODEL, "--models", str(mlx_models_dir)]
        + ["--redis", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    assert "cannot run the mlx engine" in done.stderr and "HOSTLER_DISABLE_ENGINES" in done.stderr
