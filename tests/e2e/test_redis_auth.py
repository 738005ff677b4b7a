"""Redis that asks for credentials: a password and an ACL user, on real servers and processes.

(A rediss:// URL building a TLS connection is tests/client/test_connection.py's.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from conftest import start_stack, stop_stack
from hostler import Client, ConnectionFailed
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_proc import redis_server

pytestmark = pytest.mark.e2e

NO_RETRY = Retry(NoBackoff(), 0)


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
