"""Fixtures that start real parts: a Redis-compatible server, real GGUF files, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from hostler import Client
from hostler.schemas import Keys
from hostler.worker.embedded_redis import EmbeddedRedis
from hostler.worker.models.fetch import GEMMA3, SMOLLM2, fetch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from make_tiny_gguf import write_tiny_gguf  # noqa: E402
from make_tiny_mlx import write_tiny_mlx  # noqa: E402


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    # One server for the session, an empty database for every test.
    connection = redis.Redis.from_url(redis_server.url)
    connection.flushall()
    connection.close()
    return redis_server.url


@pytest.fixture
def connection(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny generated GGUFs (fast) and a file that only pretends to be one."""
    base = tmp_path_factory.mktemp("model-files")
    files = {
        "tiny": write_tiny_gguf(base / "tiny.gguf"),
        "tiny-base": write_tiny_gguf(base / "tiny-base.gguf", chat_template=None, seed=1),
        "tiny-ctx": write_tiny_gguf(base / "tiny-ctx.gguf", seed=2, n_ctx_train=64),
    }
    broken = base / "broken.gguf"
    broken.write_bytes(b"this is not a gguf file at all\n" * 100)
    files["broken"] = broken
    truncated = base / "truncated.gguf"
    truncated.write_bytes(files["tiny"].read_bytes()[:5000])
    files["truncated"] = truncated
    return files


@pytest.fixture(scope="session")
def tiny_mlx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated MLX model folder (random llama weights, BPE tokenizer, chat template)."""
    return write_tiny_mlx(tmp_path_factory.mktemp("mlx-model") / "tiny-mlx")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return fetch(SMOLLM2, quiet=True)


@pytest.fixture(scope="session")
def gemma3() -> Path:
    return fetch(GEMMA3, quiet=True)


@pytest.fixture
def models_dir(tmp_path: Path, model_files: dict[str, Path]) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    for name, path in model_files.items():
        (folder / f"{name}.gguf").symlink_to(path)
    return folder


@dataclass
class Stack:
    """`hostler up` running as a real process against a real Redis, with a client."""

    url: str
    models_dir: Path
    process: subprocess.Popen[bytes]
    client: Client
    log: Path

    @property
    def keys(self) -> Keys:
        return self.client.keys

    def worker_pids(self, model: str) -> list[int]:
        return [w.pid for w in self.client.status().workers if w.model == model]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_stack(url: str, models_dir: Path, log: Path) -> Stack:
    # The URL by environment, never argv: `ps` shows every user a command line.
    env = dict(os.environ, PYTHONUNBUFFERED="1", HOSTLER_REDIS_URL=url)
    handle = log.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hostler.worker",
            "-v",
            "up",
            "--models",
            str(models_dir),
            "--no-demo",
            "--host-id",
            "testhost",
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    handle.close()
    client = Client(url, timeout=120)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if client.connection.exists(client.keys.host("testhost")):
            return Stack(url, models_dir, process, client, log)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"hostler up did not announce itself:\n{log.read_text(errors='replace')}")


def stop_stack(stack: Stack) -> None:
    stack.client.close()
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGTERM)
        try:
            stack.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(stack.process.pid, signal.SIGKILL)
            stack.process.wait()


@pytest.fixture
def stack(redis_url: str, models_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    running = start_stack(redis_url, models_dir, tmp_path / "up.log")
    try:
        yield running
    finally:
        stop_stack(running)
