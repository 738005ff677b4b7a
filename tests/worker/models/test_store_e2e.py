"""`hostler models` where Redis matters: without one (each command waits out the client's Redis retries
before going on), and an imported model served by `hostler up` (its id survives restarts, rm waits
for its unload)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Stack, start_stack, stop_stack
from hostler.worker.cli.main import main

pytestmark = pytest.mark.e2e


def test_cli_import_show_rm_without_redis(tmp_path: Path, user_gguf: Path) -> None:
    models = tmp_path / "models"
    env = {"HOSTLER_MODELS": str(models), "HOSTLER_REDIS_URL": "redis://127.0.0.1:1/0"}
    runner = CliRunner(env=env)
    imported = runner.invoke(main, ["models", "import", str(user_gguf), "--id", "tiny-user"])
    assert imported.exit_code == 0, imported.output
    assert "imported tiny-user (llama)" in imported.output
    again = runner.invoke(main, ["models", "import", str(user_gguf), "--id", "tiny-user"])
    assert again.exit_code == 1 and "already used" in again.output
    shown = runner.invoke(main, ["models", "show", "tiny-user", "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["engine"] == "llama" and data["chat_template"] is True
    assert data["files"] == [{"name": user_gguf.name, "size_bytes": user_gguf.stat().st_size}]
    assert data["context_length"] == 512 and data["n_ctx"] == 2048
    assert data["memory_bytes"] > 0 and "KV cache" in data["memory"]
    assert data["source"] == f"imported: linked to {user_gguf.resolve()}"
    assert "Redis not reachable" in data["redis_error"]
    text = runner.invoke(main, ["models", "show", "tiny-user"])
    assert "context         512 trained, loads with n_ctx 2048" in text.output
    removed = runner.invoke(main, ["models", "rm", "tiny-user"])
    assert removed.exit_code == 0, removed.output
    assert "cannot ask Redis" in removed.output and "removed tiny-user" in removed.output
    assert user_gguf.exists() and not (models / "tiny-user").exists()
    missing = runner.invoke(main, ["models", "show", "tiny-user"])
    assert missing.exit_code == 1 and "no model 'tiny-user'" in missing.output


def test_imported_model_is_served_keeps_its_id_across_restarts_and_rm_waits_for_unload(
    redis_url: str, tmp_path: Path, user_gguf: Path
) -> None:
    models = tmp_path / "models"
    runner = CliRunner(env={"HOSTLER_MODELS": str(models), "HOSTLER_REDIS_URL": redis_url})
    assert runner.invoke(main, ["models", "import", str(user_gguf), "--id", "my-tiny"]).exit_code == 0
    for attempt in range(2):  # a restart of the whole stack finds the same id
        stack = start_stack(redis_url, models, tmp_path / f"up{attempt}.log")
        try:
            result = stack.client.complete("my-tiny", "Once upon a time", max_tokens=4, temperature=0)
            assert result.usage.completion_tokens >= 1
        finally:
            stop_stack(stack)
    stack = start_stack(redis_url, models, tmp_path / "up-rm.log")
    try:
        stack.client.load("my-tiny")
        shown = json.loads(runner.invoke(main, ["models", "show", "my-tiny", "--json"]).output)
        assert shown["hosts"] == ["testhost"] and shown["loaded_on"] == ["testhost"]
        refused = runner.invoke(main, ["models", "rm", "my-tiny"])
        assert refused.exit_code == 1 and "is loaded on testhost" in refused.output
        assert (models / "my-tiny" / "model.yaml").exists()
        forced = runner.invoke(main, ["models", "rm", "my-tiny", "--force"])
        assert forced.exit_code == 0, forced.output
        assert not stack.worker_pids("my-tiny") and not (models / "my-tiny").exists()
        assert user_gguf.exists()
        _wait_until_gone(stack, "my-tiny")
    finally:
        stop_stack(stack)


def _wait_until_gone(stack: Stack, model: str, timeout: float = 15.0) -> None:
    # The host agent rescans its models directory every few seconds.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if model not in {m.id for m in stack.client.models()}:
            return
        time.sleep(0.2)
    raise AssertionError(f"{model} is still listed {timeout} s after rm")
