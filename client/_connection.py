"""Redis connections shared by the client and the worker."""

from __future__ import annotations

import os

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

DEFAULT_URL = "redis://127.0.0.1:6379/0"
URL_ENV = "HOSTLER_REDIS_URL"
PREFIX_ENV = "HOSTLER_PREFIX"


def resolve_url(url: str | None) -> str:
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


def connect(url: str | None = None, *, socket_timeout: float | None = 30.0) -> redis.Redis:
    """A Redis client from a URL (redis://, rediss:// and unix:// with passwords all work).

    Commands retry with backoff on connection errors so that a Redis restart is a pause,
    not a crash. Blocking commands pass their own, shorter timeouts.
    """
    return redis.Redis.from_url(
        resolve_url(url),
        socket_timeout=socket_timeout,
        socket_connect_timeout=10.0,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=6),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


# An asyncio client may have thousands of jobs in flight; they share this many connections,
# waiting their turn for one rather than opening a connection each.
ASYNC_MAX_CONNECTIONS = 32


def connect_async(url: str | None = None, *, socket_timeout: float | None = 30.0) -> redis.asyncio.Redis:
    """The asyncio twin of connect(), with the same retries, on a bounded pool."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        resolve_url(url),
        max_connections=ASYNC_MAX_CONNECTIONS,
        timeout=60,
        socket_timeout=socket_timeout,
        socket_connect_timeout=10.0,
        health_check_interval=30,
        retry=AsyncRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=6),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    return redis.asyncio.Redis.from_pool(pool)
