"""Redis connections shared by the client and the worker."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.connection as async_connection
import redis.connection as sync_connection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.retry import Retry

from ._errors import ConnectionFailed

DEFAULT_URL = "redis://127.0.0.1:6379/0"
URL_ENV = "HOSTLER_REDIS_URL"
PREFIX_ENV = "HOSTLER_PREFIX"
MASK = "***"


def resolve_url(url: str | None) -> str:
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


def mask_url(url: str) -> str:
    """The URL as hostler shows it: any password (userinfo or ?password=) replaced by ***.

    The one way a Redis URL reaches output, logs and reports, so a password never does.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # Whatever could not be parsed might hold a password anywhere in it.
        return f"<unparsable Redis URL: {MASK}>"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if k.lower() == "password" else v) for k, v in pairs], safe="*/")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


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


def _connection_class(url: str, *, asynchronous: bool) -> type[Any]:
    """The guarded twin of the class redis-py picks for the URL's scheme."""
    scheme = url.split("://", 1)[0].lower()
    if asynchronous:
        chosen: dict[str, type[Any]] = {"rediss": GuardedAsyncSSLConnection, "unix": GuardedAsyncUnixConnection}
        return chosen.get(scheme, GuardedAsyncConnection)
    chosen = {"rediss": GuardedSSLConnection, "unix": GuardedUnixConnection}
    return chosen.get(scheme, GuardedConnection)


def connect(url: str | None = None, *, socket_timeout: float | None = 30.0) -> redis.Redis:
    """A Redis client from a URL (redis://, rediss:// and unix:// with passwords all work).

    Commands retry with backoff on connection errors so that a Redis restart is a pause,
    not a crash. Blocking commands pass their own, shorter timeouts. Refused credentials
    raise ConnectionFailed at once, naming the URL with its password masked.
    """
    resolved = resolve_url(url)
    return redis.Redis.from_url(
        resolved,
        connection_class=_connection_class(resolved, asynchronous=False),
        shown_url=mask_url(resolved),
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
    resolved = resolve_url(url)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        resolved,
        connection_class=_connection_class(resolved, asynchronous=True),
        shown_url=mask_url(resolved),
        max_connections=ASYNC_MAX_CONNECTIONS,
        timeout=60,
        socket_timeout=socket_timeout,
        socket_connect_timeout=10.0,
        health_check_interval=30,
        retry=AsyncRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=6),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    return redis.asyncio.Redis.from_pool(pool)
