"""A throwaway redis-server with extra config (a password, ACL users), and the ways it refuses a
client, for the credential tests (the `refusals` fixture of tests/conftest.py)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hostler.client._connection import mask_url
from hostler.worker.embedded_redis import find_server_binary, free_port


def _answers(port: int) -> bool:
    """True once the server replies to a command at all; NOAUTH counts, since it means it is up."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    # -LOADING would mean it is still reading its data; nothing else is a reason to wait.
    return reply.startswith((b"+PONG", b"-NOAUTH"))


@contextmanager
def redis_server(data_dir: Path, *config: str) -> Iterator[int]:
    """A throwaway redis-server on a free port with extra config arguments; yields the port."""
    # EmbeddedRedis takes no extra config, so the server is started here with the same binary.
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "server.log"
    args = [str(find_server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir)]
    args += ["--save", "", "--appendonly", "no", "--logfile", str(log), *config]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server on port {port} did not start: {detail}")
            time.sleep(0.05)
        yield port
    finally:
        process.kill()
        process.wait(10)


@dataclass
class Refusal:
    """A URL the server refuses, the secret in it, and what the refusal must say."""

    url: str
    secret: str
    says: str


REFUSAL_CASES = ["wrong password", "unknown user", "no permission"]


def assert_says(message: str, refusal: Refusal) -> None:
    """The message names the masked URL and the refusal, and never the secret."""
    assert mask_url(refusal.url) in message, message
    assert refusal.says in message, message
    assert refusal.secret not in message, message
    if refusal.says == "ACL refused":
        # Redis names the refused command; the message passes it on.
        assert "no permissions to run the '" in message, message
