"""compose.yaml describes redis, a controller and two host agents with their own models."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml
from conftest import ROOT
from hostler.worker.cli.main import main


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_compose_names_redis_a_controller_and_two_hosts() -> None:
    services = _compose()["services"]
    assert {"redis", "controller", "janitor", "host-a", "host-b"} <= set(services)
    assert services["controller"]["command"][0] == "controller"
    volumes = []
    for name in ("host-a", "host-b"):
        command = services[name]["command"]
        assert command[0] == "host" and "--host-id" in command and "--max-memory" in command
        volumes.append(services[name]["volumes"][0].split(":")[0])
    assert volumes[0] != volumes[1], "each host agent has its own models volume"


def test_compose_commands_are_real_hostler_commands() -> None:
    services = _compose()["services"]
    for name in ("controller", "janitor", "host-a", "host-b"):
        command = services[name]["command"]
        sub = main.commands[command[0]]
        options = {opt for param in sub.params for opt in getattr(param, "opts", [])}
        for word in command[1:]:
            if word.startswith("--"):
                assert word in options, f"{name}: hostler {command[0]} has no option {word}"


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker is not installed here")
def test_docker_compose_config_accepts_it() -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run(["docker", "compose", "config", "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
