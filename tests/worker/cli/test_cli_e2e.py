"""The `hostler` client commands against a running stack: tokens, complete, models, status, chat."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import Stack
from hostler.worker.cli.main import main

pytestmark = pytest.mark.e2e


def test_client_commands_against_a_running_stack(stack: Stack) -> None:
    runner = CliRunner(env={"HOSTLER_REDIS_URL": stack.url})
    tokens = runner.invoke(main, ["tokens", "tiny", "Once upon a time"])
    assert tokens.exit_code == 0, tokens.output
    assert int(tokens.output) == stack.client.count_tokens("tiny", "Once upon a time")
    completed = runner.invoke(main, ["complete", "tiny", "Once upon a time", "--max-tokens", "8", "--temperature", "0"])
    assert completed.exit_code == 0, completed.output
    expected = stack.client.complete("tiny", "Once upon a time", max_tokens=8, temperature=0).text
    assert completed.output == expected + "\n"
    listed = runner.invoke(main, ["models", "ls", "--json"])
    rows = {m["id"]: m for m in json.loads(listed.output)}
    assert set(rows) >= {"tiny", "tiny-base"}
    assert rows["tiny"]["estimate_bytes"] > 0 and "KV cache" in rows["tiny"]["estimate"]
    assert rows["tiny"]["fits_on"] == ["testhost"] and rows["broken"]["estimate_bytes"] is None
    table = runner.invoke(main, ["models", "ls"])
    assert "NEEDS" in table.output and "testhost" in table.output
    status = runner.invoke(main, ["status", "--json"])
    parsed = json.loads(status.output)
    assert [row["model"] for row in parsed["workers"]] == ["tiny"]
    assert [(p["model"], p["host"]) for p in parsed["placements"]] == [("tiny", "testhost")]
    assert parsed["hosts"][0]["host"] == "testhost" and "tiny" in parsed["hosts"][0]["placed"]
    assert parsed["controller"]
    text = runner.invoke(main, ["status"])
    assert "testhost" in text.output and "FREE" in text.output and "queues:" in text.output
    missing = runner.invoke(main, ["tokens", "nope", "x"])
    assert missing.exit_code == 1 and "not found" in missing.output


def test_interactive_chat_streams_replies(stack: Stack) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "hostler.worker", "chat", "tiny", "--redis", stack.url, "--max-tokens", "6"],
        input="hello\n\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith(">>> ") and len(process.stdout.strip()) > 4
