"""Redis credentials stay secret and, when wrong, fail at once with one clear line.

Real servers (requirepass and ACL users), real `hostler up`, workers and gateway processes:
the password must not appear in any hostler process's command line, in what they print or
log, in `hostler status`, in /management/processes, or anywhere in Redis; where the URL is
shown it is masked. Wrong credentials end every server command at once with one line (the
client's own refusals are tests/client/test_connection.py's).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from conftest import Stack, start_stack, stop_stack
from gateway_proc import Gateway, free_port, start_gateway
from hostler.client._connection import mask_url
from redis_proc import REFUSAL_CASES, Refusal, assert_says, redis_server

pytestmark = pytest.mark.e2e

# A CLI command is a fresh Python process (imports included) that must give up, not retry.
COMMAND_LIMIT_S = 30.0


@dataclass
class Secured:
    """A server, the URL hostler gets, the password in it, and an admin connection."""

    url: str
    password: str
    admin: redis.Redis


@pytest.fixture(params=["requirepass", "acl-user"])
def secured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Secured]:
    password = secrets.token_hex(12)
    if request.param == "requirepass":
        with redis_server(tmp_path / "redis", "--requirepass", password) as port:
            admin = redis.Redis(port=port, password=password)
            yield Secured(f"redis://:{password}@127.0.0.1:{port}/0", password, admin)
            admin.close()
        return
    with redis_server(tmp_path / "redis") as port:
        admin_password = secrets.token_hex(12)
        setup = redis.Redis(port=port)
        setup.acl_setuser("admin", enabled=True, passwords=[f"+{admin_password}"], keys=["*"], channels=["*"],
                          commands=["+@all"])  # fmt: skip
        setup.acl_setuser("hostler", enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
                          commands=["+@all"])  # fmt: skip
        setup.acl_setuser("default", enabled=False)
        setup.close()
        admin = redis.Redis(port=port, username="admin", password=admin_password)
        yield Secured(f"redis://hostler:{password}@127.0.0.1:{port}/0", password, admin)
        admin.close()


def _hostler(*args: str, url: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # The URL by environment, as hostler's own children get it: --redis would put it in argv.
    env = {**os.environ, "HOSTLER_REDIS_URL": url, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "hostler.worker", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=COMMAND_LIMIT_S, cwd=cwd)


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _cmdline(process: psutil.Process) -> str:
    return " ".join(process.cmdline())


def _everything_in(connection: redis.Redis) -> bytes:
    """Every key and value in the database, as one blob to search."""
    dump: list[bytes] = []
    for key in connection.scan_iter(count=1000):
        kind = connection.type(key).decode()
        dump.append(key)
        if kind == "string":
            dump.append(connection.get(key) or b"")
        elif kind == "hash":
            dump.extend(b"%s=%s" % pair for pair in connection.hgetall(key).items())
        elif kind == "list":
            dump.extend(connection.lrange(key, 0, -1))
        elif kind == "set":
            dump.extend(connection.smembers(key))
        elif kind == "zset":
            dump.extend(connection.zrange(key, 0, -1))
        elif kind == "stream":
            dump.extend(repr(entry).encode() for entry in connection.xrange(key))
    return b"\n".join(dump)


def _use(stack: Stack, gateway: Gateway) -> None:
    """One job through the Python client and one through the gateway."""
    result = stack.client.complete("tiny", "Hello", max_tokens=3, temperature=0)
    assert result.usage.completion_tokens == 3, stack.output()
    reply = httpx.post(
        f"{gateway.base_url}/completions",
        json={"model": "tiny", "prompt": "Hello", "max_tokens": 3, "temperature": 0},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text


def _assert_processes_keep_it(stack: Stack, gateway: Gateway, secured: Secured) -> None:
    processes = _tree(stack.process.pid) + _tree(gateway.process.pid)
    workers = [p for p in processes if "--model" in p.cmdline()]
    assert workers, [_cmdline(p) for p in processes]
    for process in processes:
        assert secured.password not in _cmdline(process), _cmdline(process)
    for worker in workers:
        # Given by environment, readable by this user alone; -P: no source folder can shadow hostler.
        assert worker.environ()["HOSTLER_REDIS_URL"] == secured.url
        if sys.version_info >= (3, 11):
            assert worker.cmdline()[1] == "-P", _cmdline(worker)


def test_no_password_in_command_lines_output_logs_status_or_redis(
    secured: Secured, models_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("fastapi", reason="the gateway extra is not installed")
    stack = start_stack(secured.url, models_dir, tmp_path / "up.log")
    gateway: Gateway | None = None
    try:
        gateway = start_gateway(secured.url, tmp_path / "gateway.log", verbose=True)
        _use(stack, gateway)
        _assert_processes_keep_it(stack, gateway, secured)
        shown = {
            "status": _hostler("status", url=secured.url),
            "status --json": _hostler("status", "--json", url=secured.url),
        }
        processes = httpx.get(f"{gateway.url}/management/processes", timeout=30)
        assert processes.status_code == 200, processes.text
        assert "tiny" in processes.text
        stored = _everything_in(secured.admin)
        assert b"hostler:host:testhost" in stored and b"hostler:worker:" in stored
    finally:
        if gateway is not None:
            gateway.stop()
        stop_stack(stack)
    for name, run in shown.items():
        assert run.returncode == 0, run.stderr
        assert secured.password not in run.stdout + run.stderr, name
    assert "testhost" in shown["status"].stdout
    assert secured.password not in processes.text
    assert secured.password.encode() not in stored
    # Read after the processes ended, so their shutdown lines are in the logs too.
    assert gateway is not None
    up_log, gateway_log = stack.output(), gateway.output()
    assert secured.password not in up_log
    assert secured.password not in gateway_log
    assert f"HOSTLER_REDIS_URL={mask_url(secured.url)}" in up_log
    assert f"in front of {mask_url(secured.url)}" in gateway_log
    assert ":***@127.0.0.1:" in mask_url(secured.url)


def _server_commands(models_dir: Path) -> dict[str, list[str]]:
    models = ["--models", str(models_dir)]
    return {
        "up": ["up", *models, "--no-demo"],
        "host": ["host", *models],
        "worker": ["worker", "--model", "tiny", *models],
        "controller": ["controller"],
        "janitor": ["janitor"],
        "gateway": ["gateway", "--port", str(free_port())],
    }


@pytest.mark.parametrize("case", REFUSAL_CASES)
def test_every_server_command_exits_with_one_line(
    case: str, refusals: dict[str, Refusal], model_files: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("fastapi", reason="the gateway extra is not installed")
    refusal = refusals[case]
    # Only a good model: the broken ones of `models_dir` would add warnings of their own.
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "tiny.gguf").symlink_to(model_files["tiny"])
    commands = _server_commands(models_dir)
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = dict(
            zip(
                commands,
                pool.map(lambda args: _hostler(*args, url=refusal.url, cwd=tmp_path), commands.values()),
                strict=True,
            )
        )
    for name, run in runs.items():
        output = run.stdout + run.stderr
        assert run.returncode != 0, (name, output)
        assert "Traceback" not in output, (name, output)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, (name, run.stderr)
        assert_says(lines[0], refusal)
        assert refusal.secret not in output, name
