"""Redis URLs: one server or a Sentinel-watched primary, hostler's durability parameters, and the
masking that keeps every password (the servers' and the Sentinels') out of output."""

from __future__ import annotations

import asyncio

import pytest
from hostler import Client, InvalidRequest
from hostler.client._connection import (
    GuardedAsyncSentinelConnection,
    GuardedSentinelConnection,
    GuardedSentinelSSLConnection,
    connect,
    connect_async,
    durability_of,
)
from hostler.client._redis_url import DEFAULT_WAIT_TIMEOUT_MS, Durability, mask_url, parse_redis_url
from redis.sentinel import SentinelConnectionPool


def test_a_sentinel_url_names_its_sentinels_service_db_and_credentials() -> None:
    url = "redis+sentinel://app:s%40cret@10.0.0.1,10.0.0.2:26380,[::1]:26381/cache/2?sentinel_password=watch"
    target = parse_redis_url(url).sentinel
    assert target is not None
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381))
    assert (target.service, target.db, target.tls) == ("cache", 2, False)
    assert (target.username, target.password) == ("app", "s@cret")
    assert (target.sentinel_username, target.sentinel_password) == (None, "watch")


def test_tls_and_defaults() -> None:
    parsed = parse_redis_url("rediss+sentinel://:pw@sentinel.example/svc?ssl_ca_certs=/etc/ca.pem")
    target = parsed.sentinel
    assert target is not None
    assert (target.tls, target.db, target.username, target.password) == (True, 0, None, "pw")
    assert target.ssl == {"ssl_ca_certs": "/etc/ca.pem"}
    # Nothing waits for replicas unless the URL asks (docs/architecture.md says why).
    assert parsed.durability == Durability(0, DEFAULT_WAIT_TIMEOUT_MS)


def test_wait_parameters_on_any_url_and_taken_out_of_what_redis_py_reads() -> None:
    parsed = parse_redis_url("redis://:pw@127.0.0.1:6379/0?wait_replicas=2&wait_timeout_ms=500&socket_timeout=3")
    assert parsed.durability == Durability(2, 500)
    assert parsed.server_url == "redis://:pw@127.0.0.1:6379/0?socket_timeout=3"
    assert parse_redis_url("redis://127.0.0.1/0").durability == Durability(0)
    on = parse_redis_url("redis+sentinel://127.0.0.1/svc?wait_replicas=1").durability
    assert on.waits and on == Durability(1)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://127.0.0.1:26379", "no service name"),
        ("redis+sentinel://127.0.0.1:26379/svc/x", "the database must be a number"),
        ("redis+sentinel://127.0.0.1:26379/svc/0/extra", "too many path parts"),
        ("redis+sentinel://127.0.0.1:99999/svc", "out of range"),
        ("redis+sentinel://127.0.0.1:26379,/svc", "no Sentinel address"),
        ("redis+sentinel://127.0.0.1/svc?sentinel_pasword=x", "unknown parameter(s) sentinel_pasword"),
        ("redis://127.0.0.1/0?wait_replicas=many", "wait_replicas must be an integer from 0 to 16"),
        ("redis://127.0.0.1/0?wait_timeout_ms=0", "wait_timeout_ms must be an integer from 1 to 20000"),
    ],
)
def test_a_wrong_url_is_an_invalid_request_naming_the_mistake(url: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match="Redis URL") as refused:
        parse_redis_url(url)
    assert says in str(refused.value)


def test_a_wrong_url_never_shows_its_passwords() -> None:
    with pytest.raises(InvalidRequest) as refused:
        connect("redis+sentinel://u:topsecret@127.0.0.1/svc/x?sentinel_password=alsosecret")
    assert "topsecret" not in str(refused.value) and "alsosecret" not in str(refused.value)
    assert "u:***@" in str(refused.value)


def test_mask_url_hides_the_servers_and_the_sentinels_passwords() -> None:
    url = "rediss+sentinel://app:pw1@h1:26379,h2:26380/svc/0?sentinel_password=pw2&wait_replicas=1"
    shown = mask_url(url)
    assert "pw1" not in shown and "pw2" not in shown
    assert shown == "rediss+sentinel://app:***@h1:26379,h2:26380/svc/0?sentinel_password=***&wait_replicas=1"


def test_connect_builds_a_sentinel_pool_of_guarded_connections_without_connecting() -> None:
    # Nothing listens on example.invalid: building the client must not connect.
    connection = connect("redis+sentinel://:pw@example.invalid:26379/svc/3")
    try:
        pool = connection.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.connection_class is GuardedSentinelConnection
        assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (3, "pw")
        assert pool.connection_kwargs["shown_url"] == "redis+sentinel://:***@example.invalid:26379/svc/3"
        assert durability_of(connection) == Durability(0)
    finally:
        connection.close()
    tls = connect("rediss+sentinel://example.invalid/svc")
    try:
        assert tls.connection_pool.connection_class is GuardedSentinelSSLConnection
        sentinel = tls.connection_pool.sentinel_manager.sentinels[0]
        assert sentinel.connection_pool.connection_kwargs["socket_timeout"] == 2.0
    finally:
        tls.close()
    with Client("redis+sentinel://example.invalid/svc?wait_replicas=1") as client:
        assert durability_of(client.connection) == Durability(1)


def test_connect_async_builds_a_blocking_sentinel_pool() -> None:
    async def build() -> None:
        connection = connect_async("redis+sentinel://example.invalid/svc?wait_replicas=2")
        try:
            pool = connection.connection_pool
            assert pool.connection_class is GuardedAsyncSentinelConnection
            assert pool.max_connections == 32
            assert durability_of(connection) == Durability(2)
        finally:
            await connection.aclose()

    asyncio.run(build())
