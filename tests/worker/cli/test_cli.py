"""The `hostler` command: every command documents itself and refuses bad arguments.

The client commands against a running stack are test_cli_e2e.py's.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hostler.worker.cli.main import main

COMMANDS = [
    ["up"],
    ["worker"],
    ["host"],
    ["controller"],
    ["complete"],
    ["chat"],
    ["tokens"],
    ["models"],
    ["models", "ls"],
    ["load"],
    ["unload"],
    ["status"],
    ["batch"],
    ["batch", "run"],
    ["batch", "status"],
    ["summarize"],
    ["gateway"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    if command not in (["models"], ["batch"]):
        assert "Example: hostler" in result.output


def test_worker_refuses_a_path_as_model_id(tmp_path: object) -> None:
    result = CliRunner().invoke(main, ["worker", "--model", "../etc/passwd", "--models", "/tmp"])
    assert result.exit_code != 0 and "invalid model id" in result.output


@pytest.mark.parametrize("command", [["janitor"], ["controller"], ["status"]], ids=" ".join)
def test_a_malformed_sentinel_url_is_one_line_without_its_password(command: list[str]) -> None:
    url = "redis+sentinel://app:hunter22@127.0.0.1:26379/hostler/not-a-db?sentinel_password=sesame"
    result = CliRunner().invoke(main, command, env={"HOSTLER_REDIS_URL": url})
    assert result.exit_code == 1, result.output
    assert "the database must be a number" in result.output and "app:***@" in result.output
    assert "hunter22" not in result.output and "sesame" not in result.output
