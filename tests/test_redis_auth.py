"""Redis that asks for credentials: a password, an ACL user, and TLS URLs, on real servers and processes."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from conftest import start_stack, stop_stack
from hostler import Client, ConnectionFailed
from hostler.client._connection import connect
from hostler.worker.embedded_redis import find_server_binary, free_port
from redis.backoff import NoBackoff
from redis.connection import SSLConnection
from redis.retry import Retry

NO_RETRY = Retry(NoBackoff(), 0)


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


def _assert_serves(url: str, models_dir: Path, log: Path) -> None:
    stack = start_stack(url, models_dir, log)
    try:
        result = stack.client.complete("tiny", "Hello", max_tokens=3, temperature=0)
        assert result.usage.completion_tokens == 3, stack.output()
        # The worker is a separate process started by the host agent: it must have been given
        # the credentials too, or it could not have claimed the job above.
        assert stack.worker_pids("tiny"), stack.output()
    finally:
        stop_stack(stack)


def test_password_protected_redis_serves_and_rejects_a_wrong_password(tmp_path: Path, models_dir: Path) -> None:
    with redis_server(tmp_path / "redis", "--requirepass", "secret") as port:
        # Without the password the server refuses: otherwise this test would prove nothing.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, protocol=2, retry=NO_RETRY).ping()
        _assert_serves(f"redis://:secret@127.0.0.1:{port}/0", models_dir, tmp_path / "up.log")

        started = time.monotonic()
        with pytest.raises((ConnectionFailed, redis.AuthenticationError)) as failure:
            with Client(f"redis://:wrong@127.0.0.1:{port}/0", timeout=20) as client:
                client.complete("tiny", "Hello", max_tokens=3)
        assert "password" in str(failure.value).lower()
        # A refused password is final: it must not look like a job that is merely slow.
        assert time.monotonic() - started < 15


def test_acl_user_serves_with_the_default_user_disabled(tmp_path: Path, models_dir: Path) -> None:
    with redis_server(tmp_path / "redis") as port:
        admin = redis.Redis(port=port)
        try:
            admin.acl_setuser(
                "hostler", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all"]
            )
            admin.acl_setuser("default", enabled=False)
        finally:
            admin.close()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, protocol=2, retry=NO_RETRY).ping()
        _assert_serves(f"redis://hostler:pw@127.0.0.1:{port}/0", models_dir, tmp_path / "up.log")


def test_rediss_url_gives_a_tls_connection_with_its_credentials() -> None:
    # Nothing listens on example.invalid: building the client must not connect.
    url = "rediss://:pw@example.invalid:6380/0"
    connection = connect(url)
    try:
        pool = connection.connection_pool
        assert issubclass(pool.connection_class, SSLConnection)
        assert pool.connection_kwargs["host"] == "example.invalid"
        assert pool.connection_kwargs["port"] == 6380
        assert pool.connection_kwargs["password"] == "pw"
        assert pool.connection_kwargs["db"] == 0
    finally:
        connection.close()
    with Client(url) as client:
        assert issubclass(client.connection.connection_pool.connection_class, SSLConnection)
