"""compose.yaml describes redis, a controller and two host agents with their own models; its
`sentinel` profile adds two replicas and three Sentinels."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis_proc
import yaml
from conftest import ROOT
from hostler.client._redis_url import parse_redis_url
from hostler.worker.cli.main import main
from hostler.worker.embedded_redis import find_server_binary, free_port


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


def _sentinel_lines(command: list[str]) -> list[str]:
    """The config lines a compose Sentinel writes at start (the single-quoted printf arguments)."""
    script = command[-1]
    printed = script.split("> /tmp/sentinel.conf")[0]
    return [piece for piece in printed.split("'")[1::2] if piece != "%s\\n"]


def test_the_sentinel_profile_watches_redis_with_two_replicas_and_three_sentinels() -> None:
    compose = _compose()
    services = compose["services"]
    profiled = {name for name, service in services.items() if "sentinel" in service.get("profiles", [])}
    assert profiled == {"redis-replica-1", "redis-replica-2", "sentinel-1", "sentinel-2", "sentinel-3"}
    # A plain `docker compose up` is what it was: one Redis, no Sentinels.
    assert all("profiles" not in services[name] for name in ("redis", "controller", "janitor", "host-a", "host-b"))
    for name in ("redis-replica-1", "redis-replica-2"):
        command = services[name]["command"]
        assert command[command.index("--replicaof") + 1 : command.index("--replicaof") + 3] == ["redis", "6379"]
    target = parse_redis_url(compose["x-sentinel-url"]).sentinel
    assert target is not None
    assert sorted(target.sentinels) == [(f"sentinel-{i}", 26379) for i in (1, 2, 3)]
    for i in (1, 2, 3):
        lines = _sentinel_lines(services[f"sentinel-{i}"]["command"])
        assert "port 26379" in lines
        assert f"sentinel monitor {target.service} redis 6379 2" in lines


def test_the_compose_sentinel_config_is_one_redis_server_accepts(tmp_path: Path) -> None:
    lines = _sentinel_lines(_compose()["services"]["sentinel-1"]["command"])
    with redis_proc.redis_server(tmp_path / "primary") as primary:
        port = free_port()
        local = [f"port {port}" if line.startswith("port ") else line.replace(" redis 6379 ", f" 127.0.0.1 {primary} ")
                 for line in lines]  # fmt: skip
        conf = tmp_path / "sentinel.conf"
        conf.write_text("\n".join([*local, f"dir {tmp_path}", "bind 127.0.0.1", ""]))
        process = subprocess.Popen([str(find_server_binary()), str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    state = redis.Redis(port=port, socket_connect_timeout=0.5).sentinel_master("hostler")
                    break
                except redis.RedisError:
                    assert process.poll() is None, "redis-server refused the compose Sentinel config"
                    assert time.monotonic() < deadline, "the Sentinel did not answer"
                    time.sleep(0.1)
            assert (int(state["port"]), int(state["quorum"])) == (primary, 2)
        finally:
            process.kill()
            process.wait(10)
