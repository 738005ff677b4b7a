"""Connections the client builds from a URL, and credentials a server refuses: ConnectionFailed at
once, saying why, never the secret (tests/e2e/test_redis_auth.py and test_secrets.py: whole stacks)."""

from __future__ import annotations

import asyncio
import time

import pytest
from hostler import AsyncClient, Client, ConnectionFailed
from hostler.client._connection import connect
from redis.connection import SSLConnection
from redis_proc import REFUSAL_CASES, Refusal, assert_says

# Refusals are final; retried like an outage they would take redis-py's 6 backoffs and more.
CLIENT_LIMIT_S = 2.0


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


@pytest.mark.parametrize("case", REFUSAL_CASES)
def test_the_client_raises_connection_failed_at_once(case: str, refusals: dict[str, Refusal]) -> None:
    refusal = refusals[case]
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as failure:
        with Client(refusal.url, timeout=30) as client:
            client.complete("tiny", "Hello", max_tokens=3)
    assert time.monotonic() - started < CLIENT_LIMIT_S
    assert_says(str(failure.value), refusal)


@pytest.mark.parametrize("case", REFUSAL_CASES)
def test_the_async_client_raises_connection_failed_at_once(case: str, refusals: dict[str, Refusal]) -> None:
    refusal = refusals[case]

    async def complete() -> None:
        async with AsyncClient(refusal.url, timeout=30) as client:
            await client.complete("tiny", "Hello", max_tokens=3)

    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as failure:
        asyncio.run(complete())
    assert time.monotonic() - started < CLIENT_LIMIT_S
    assert_says(str(failure.value), refusal)
