"""The `hostler` command: every command documents itself, and the client commands work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import Stack
from hostler.worker.cli import main

COMMANDS = [["up"], ["worker"], ["complete"], ["chat"], ["tokens"], ["models"], ["models", "ls"], ["status"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    if command != ["models"]:
        assert "Example: hostler" in result.output


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
    assert {m["id"] for m in json.loads(listed.output)} >= {"tiny", "tiny-base"}
    status = runner.invoke(main, ["status", "--json"])
    assert [row["model"] for row in json.loads(status.output)] == ["tiny"]
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


def test_worker_refuses_a_path_as_model_id(tmp_path: object) -> None:
    result = CliRunner().invoke(main, ["worker", "--model", "../etc/passwd", "--models", "/tmp"])
    assert result.exit_code != 0 and "invalid model id" in result.output
