"""Redis connections shared by the client and the worker: the one place they are made.

A URL names one server or a Sentinel-watched primary (_redis_url); either way the connection
retries through an outage, follows a failover (a Sentinel pool asks the Sentinels for the
primary again after every lost connection), turns refused credentials into ConnectionFailed,
and carries the URL's Durability for the writes that must outlive a failover.
"""

from __future__ import annotations

import os
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.connection as async_connection
import redis.asyncio.sentinel as async_sentinel
import redis.connection as sync_connection
import redis.sentinel as sync_sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.retry import Retry

from ._errors import ConnectionFailed
from ._redis_url import MASK, Durability, SentinelTarget, mask_url, parse_redis_url

__all__ = [
    "DEFAULT_URL",
    "MASK",
    "PREFIX_ENV",
    "URL_ENV",
    "HostlerAsyncRedis",
    "HostlerRedis",
    "connect",
    "connect_async",
    "durability_of",
    "mask_url",
    "resolve_url",
]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
URL_ENV = "HOSTLER_REDIS_URL"
PREFIX_ENV = "HOSTLER_PREFIX"


def resolve_url(url: str | None) -> str:
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


def _refused(shown_url: str, exc: AuthenticationError | NoPermissionError) -> ConnectionFailed:
    if isinstance(exc, AuthenticationError):
        return ConnectionFailed(f"Redis at {shown_url}: authentication failed ({exc})")
    return ConnectionFailed(f"Redis at {shown_url}: the ACL refused a command ({exc})")


# Refused credentials are final, unlike an outage: these connections raise ConnectionFailed,
# which is no redis.ConnectionError, so neither redis-py's retries nor hostler's outage loops
# take it for a server that is down. The socket is dropped first, since a refusal inside a
# pipeline leaves its other replies unread.


class _GuardedSync(sync_connection.AbstractConnection):
    def __init__(self, *args: Any, shown_url: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shown_url = shown_url
        self._handshaking = False

    def on_connect_check_health(self, check_health: bool = True) -> None:
        # redis-py itself ignores a NOPERM for its optional CLIENT SETINFO here; one that
        # escapes (AUTH, SELECT) is fatal.
        self._handshaking = True
        try:
            super().on_connect_check_health(check_health)
        except (AuthenticationError, NoPermissionError) as exc:
            self.disconnect()
            raise _refused(self.shown_url, exc) from exc
        finally:
            self._handshaking = False

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except (AuthenticationError, NoPermissionError) as exc:
            if self._handshaking:
                raise
            self.disconnect()
            raise _refused(self.shown_url, exc) from exc


class GuardedConnection(_GuardedSync, sync_connection.Connection):
    pass


class GuardedSSLConnection(_GuardedSync, sync_connection.SSLConnection):
    pass


class GuardedUnixConnection(_GuardedSync, sync_connection.UnixDomainSocketConnection):
    pass


class _GuardedAsync(async_connection.AbstractConnection):
    def __init__(self, *args: Any, shown_url: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shown_url = shown_url
        self._handshaking = False

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        self._handshaking = True
        try:
            await super().on_connect_check_health(check_health)
        except (AuthenticationError, NoPermissionError) as exc:
            await self.disconnect()
            raise _refused(self.shown_url, exc) from exc
        finally:
            self._handshaking = False

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except (AuthenticationError, NoPermissionError) as exc:
            if self._handshaking:
                raise
            await self.disconnect()
            raise _refused(self.shown_url, exc) from exc


class GuardedAsyncConnection(_GuardedAsync, async_connection.Connection):
    pass


class GuardedAsyncSSLConnection(_GuardedAsync, async_connection.SSLConnection):
    pass


class GuardedAsyncUnixConnection(_GuardedAsync, async_connection.UnixDomainSocketConnection):
    pass


# redis-py sends a command on a dropped connection by connecting it again to the address it had:
# after a failover, the dead primary, until its retries are spent (the 21 s below). Through
# connect() instead, the Sentinels are asked first, and the retry reaches the promoted replica.


class _FollowingSentinel(sync_sentinel.SentinelManagedConnection):
    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()
        super().send_packed_command(command, check_health)


class _FollowingSentinelSSL(_FollowingSentinel, sync_sentinel.SentinelManagedSSLConnection):
    pass


class _FollowingAsyncSentinel(async_sentinel.SentinelManagedConnection):
    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()
        await super().send_packed_command(command, check_health)


class _FollowingAsyncSentinelSSL(_FollowingAsyncSentinel, async_sentinel.SentinelManagedSSLConnection):
    pass


class GuardedSentinelConnection(_GuardedSync, _FollowingSentinel):
    pass


class GuardedSentinelSSLConnection(_GuardedSync, _FollowingSentinelSSL):
    pass


class GuardedAsyncSentinelConnection(_GuardedAsync, _FollowingAsyncSentinel):
    pass


class GuardedAsyncSentinelSSLConnection(_GuardedAsync, _FollowingAsyncSentinelSSL):
    pass


class _BlockingSentinelPool(async_sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool):
    """A Sentinel pool whose callers wait their turn for a connection, as connect_async's do."""


class HostlerRedis(redis.Redis):
    """A redis.Redis that knows its URL's Durability and closes the Sentinel clients it was made with."""

    durability = Durability()

    def close(self) -> None:
        super().close()
        pool = self.connection_pool
        if isinstance(pool, sync_sentinel.SentinelConnectionPool):
            pool.sentinel_manager.close()


class HostlerAsyncRedis(redis.asyncio.Redis):
    """The asyncio twin of HostlerRedis."""

    durability = Durability()

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if isinstance(pool, async_sentinel.SentinelConnectionPool):
            await pool.sentinel_manager.aclose()


def durability_of(connection: redis.Redis | redis.asyncio.Redis) -> Durability:
    """What the connection's URL asked writes to wait for; nothing for a connection made elsewhere."""
    if isinstance(connection, HostlerRedis | HostlerAsyncRedis):
        return connection.durability
    return Durability()


def _connection_class(url: str, *, asynchronous: bool) -> type[Any]:
    """The guarded twin of the class redis-py picks for the URL's scheme."""
    scheme = url.split("://", 1)[0].lower()
    if asynchronous:
        chosen: dict[str, type[Any]] = {"rediss": GuardedAsyncSSLConnection, "unix": GuardedAsyncUnixConnection}
        return chosen.get(scheme, GuardedAsyncConnection)
    chosen = {"rediss": GuardedSSLConnection, "unix": GuardedUnixConnection}
    return chosen.get(scheme, GuardedConnection)


# A lost connection is tried again this many times, 0.1 s doubling to 2 s apart: about 5 s for
# one server (a restart), about 21 s behind Sentinels, long enough for them to notice a dead
# primary (down-after-milliseconds) and promote a replica. Longer outages are the callers'
# own loops' (worker.outage), or an error for a client's call.
RETRIES = 6
SENTINEL_RETRIES = 14
_BACKOFF = {"cap": 2.0, "base": 0.05}


def _options(target: SentinelTarget | None, shown_url: str, socket_timeout: float | None) -> dict[str, Any]:
    """What every connection of a URL is made with, but the retry (its sync and async classes differ)."""
    options: dict[str, Any] = {
        "shown_url": shown_url,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 10.0,
        "health_check_interval": 30,
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }
    if target is not None:
        options.update(db=target.db, username=target.username, password=target.password)
        if target.tls:
            options.update(target.ssl)
    return options


def _sentinel_options(target: SentinelTarget) -> dict[str, Any]:
    """How the Sentinels themselves are asked: quickly, so that a dead one costs a second, not 30."""
    options: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 1.0}
    options.update(username=target.sentinel_username, password=target.sentinel_password)
    if target.tls:
        options.update(ssl=True, **target.ssl)
    return options


def connect(url: str | None = None, *, socket_timeout: float | None = 30.0) -> redis.Redis:
    """A Redis client from a URL: redis://, rediss://, unix://, or redis+sentinel:// and
    rediss+sentinel:// for the primary a set of Sentinels watches (see _redis_url).

    Commands retry with backoff on connection errors so that a Redis restart, or a failover to
    a replica, is a pause, not a crash. Blocking commands pass their own, shorter timeouts.
    Refused credentials raise ConnectionFailed at once, naming the URL with its password masked.
    """
    resolved = resolve_url(url)
    parsed = parse_redis_url(resolved)
    target = parsed.sentinel
    options = _options(target, mask_url(resolved), socket_timeout)
    if target is None:
        assert parsed.server_url is not None
        retry = Retry(ExponentialBackoff(**_BACKOFF), retries=RETRIES)
        made = HostlerRedis.from_url(
            parsed.server_url, connection_class=_connection_class(resolved, asynchronous=False), retry=retry, **options
        )
    else:
        sentinels = sync_sentinel.Sentinel(list(target.sentinels), sentinel_kwargs=_sentinel_options(target))
        made = sentinels.master_for(
            target.service,
            redis_class=HostlerRedis,
            connection_class=GuardedSentinelSSLConnection if target.tls else GuardedSentinelConnection,
            retry=Retry(ExponentialBackoff(**_BACKOFF), retries=SENTINEL_RETRIES),
            **options,
        )
    # redis-py's constructors are typed as returning a plain Redis.
    assert isinstance(made, HostlerRedis)
    made.durability = parsed.durability
    return made


# An asyncio client may have thousands of jobs in flight; they share this many connections,
# waiting their turn for one rather than opening a connection each.
ASYNC_MAX_CONNECTIONS = 32


def connect_async(url: str | None = None, *, socket_timeout: float | None = 30.0) -> redis.asyncio.Redis:
    """The asyncio twin of connect(), with the same retries, on a bounded pool."""
    resolved = resolve_url(url)
    parsed = parse_redis_url(resolved)
    target = parsed.sentinel
    options = _options(target, mask_url(resolved), socket_timeout)
    options.update(max_connections=ASYNC_MAX_CONNECTIONS, timeout=60)
    if target is None:
        assert parsed.server_url is not None
        retry = AsyncRetry(ExponentialBackoff(**_BACKOFF), retries=RETRIES)
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            parsed.server_url, connection_class=_connection_class(resolved, asynchronous=True), retry=retry, **options
        )
        made_async = HostlerAsyncRedis.from_pool(pool)
    else:
        sentinels = async_sentinel.Sentinel(list(target.sentinels), sentinel_kwargs=_sentinel_options(target))
        made_async = sentinels.master_for(
            target.service,
            redis_class=HostlerAsyncRedis,
            connection_pool_class=_BlockingSentinelPool,
            connection_class=GuardedAsyncSentinelSSLConnection if target.tls else GuardedAsyncSentinelConnection,
            retry=AsyncRetry(ExponentialBackoff(**_BACKOFF), retries=SENTINEL_RETRIES),
            **options,
        )
    assert isinstance(made_async, HostlerAsyncRedis)
    made_async.durability = parsed.durability
    return made_async
