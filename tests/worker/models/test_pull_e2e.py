"""A model pulled from the hub (a local server at HF_ENDPOINT): removed without Redis (rm waits out the
client's Redis retries), and served by `hostler up`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import GGUF_REPO, start_stack, stop_stack
from hostler.worker.cli.main import main
from hostler.worker.models.registry import scan
from local_hub import LocalHub

pytestmark = pytest.mark.e2e


def test_rm_deletes_what_a_pull_downloaded(hub: LocalHub, tmp_path: Path) -> None:
    runner = CliRunner(env={"HOSTLER_MODELS": str(tmp_path), "HOSTLER_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert runner.invoke(main, ["models", "pull", GGUF_REPO, "--quant", "Q8_0"]).exit_code == 0
    shown = runner.invoke(main, ["models", "show", "tiny-chat-Q8_0"])
    assert f"pulled from {GGUF_REPO}@0123456789ab ({hub.url})" in shown.output
    removed = runner.invoke(main, ["models", "rm", "tiny-chat-Q8_0"])
    assert removed.exit_code == 0, removed.output
    assert not (tmp_path / "tiny-chat-Q8_0").exists() and not scan(tmp_path).models


def test_a_pulled_model_is_served_end_to_end(hub: LocalHub, redis_url: str, tmp_path: Path) -> None:
    models = tmp_path / "models"
    result = CliRunner().invoke(main, ["models", "pull", GGUF_REPO, "--file", "tiny-chat-Q4_K_M.gguf", "--models",
                                       str(models), "--id", "pulled-tiny"])  # fmt: skip
    assert result.exit_code == 0, result.output
    stack = start_stack(redis_url, models, tmp_path / "up.log")
    try:
        reply = stack.client.chat("pulled-tiny", [{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0)
        assert reply.usage.completion_tokens >= 1 and reply.usage.prompt_tokens > 1
        [info] = stack.client.models()
        assert info.id == "pulled-tiny" and info.chat_template and (info.estimate_bytes or 0) > 0
    finally:
        stop_stack(stack)
