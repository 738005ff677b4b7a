"""What a Redis URL names: one server, or the primary a set of Sentinels watches; and how many
replicas must confirm a write before hostler calls it done.

- `redis://`, `rediss://` (TLS), `unix://`: one server, read by redis-py itself.
- `redis+sentinel://[user:pass@]host[:26379][,host[:port]...]/service-name[/db]`, and
  `rediss+sentinel://` for TLS to the Sentinels and the servers alike: whichever server the
  Sentinels call the primary of `service-name`, asked again after every lost connection.
  The userinfo is the servers' credentials; `sentinel_username` / `sentinel_password` in the
  query are the Sentinels' own, when they have any. `ssl_ca_certs`, `ssl_certfile`,
  `ssl_keyfile` and `ssl_cert_reqs` set up TLS as they do in a `rediss://` URL.
- hostler's own query parameters, on any scheme: `wait_replicas` (replicas that must confirm an
  enqueue and a job's end, by `WAIT`; 0 by default) and
  `wait_timeout_ms` (how long they get; 2000 by default). See docs/architecture.md, "Redis
  Sentinel".

`mask_url` is the one way a URL reaches output, with every password in it replaced.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ._errors import InvalidRequest

__all__ = [
    "DEFAULT_SENTINEL_PORT",
    "MASK",
    "Durability",
    "RedisUrl",
    "SentinelTarget",
    "mask_url",
    "parse_redis_url",
]

MASK = "***"
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
# Off unless the URL asks, behind Sentinels too: with it, concurrent jobs on one worker showed
# stalls of seconds not yet explained (docs/architecture.md, "Redis Sentinel", has the figures).
SENTINEL_WAIT_REPLICAS = 0
DEFAULT_WAIT_TIMEOUT_MS = 2000
# Below redis-py's 30 s socket timeout, so a WAIT that runs out is an answer, not a lost connection.
MAX_WAIT_TIMEOUT_MS = 20_000
_SSL_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password", *_SSL_OPTIONS)
_WAIT_OPTIONS = ("wait_replicas", "wait_timeout_ms")
_HOST = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<name>[^:\[\]]+))(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class Durability:
    """How many replicas must hold a write (WAIT numreplicas timeout) before it counts as done."""

    replicas: int = 0
    timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS

    @property
    def waits(self) -> bool:
        return self.replicas > 0


@dataclass(frozen=True)
class SentinelTarget:
    """The primary of `service` as the Sentinels at `sentinels` name it."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    tls: bool = False
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RedisUrl:
    """A parsed URL: `server_url` for one server (hostler's parameters taken out, for
    redis-py), or `sentinel`; and the durability every acknowledged write waits for."""

    server_url: str | None
    sentinel: SentinelTarget | None
    durability: Durability


def mask_url(url: str) -> str:
    """The URL as hostler shows it: any password (userinfo, ?password=, ?sentinel_password=) as ***.

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
        masked = [(k, MASK if k.lower().endswith("password") else v) for k, v in pairs]
        query = urlencode(masked, safe="*/")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def parse_redis_url(url: str) -> RedisUrl:
    """Reads a Redis URL; InvalidRequest names what is wrong in it (with passwords masked)."""
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as exc:
        raise InvalidRequest(f"Redis URL {mask_url(url)}: {exc}") from None
    scheme = parts.scheme.lower()
    sentinel = scheme in SENTINEL_SCHEMES
    durability = _durability(url, dict(p for p in pairs if p[0] in _WAIT_OPTIONS), sentinel=sentinel)
    rest = [p for p in pairs if p[0] not in _WAIT_OPTIONS]
    if not sentinel:
        # Untouched unless hostler's own parameters were in it: redis-py refuses ones it does not know.
        server_url = url if len(rest) == len(pairs) else urlunsplit(parts._replace(query=urlencode(rest)))
        return RedisUrl(server_url, None, durability)
    return RedisUrl(None, _sentinel_target(url, SENTINEL_SCHEMES[scheme], dict(rest)), durability)


def _durability(url: str, options: dict[str, str], *, sentinel: bool) -> Durability:
    replicas = _int_option(url, options, "wait_replicas", SENTINEL_WAIT_REPLICAS if sentinel else 0, 0, 16)
    timeout = _int_option(url, options, "wait_timeout_ms", DEFAULT_WAIT_TIMEOUT_MS, 1, MAX_WAIT_TIMEOUT_MS)
    return Durability(replicas, timeout)


def _int_option(url: str, options: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequest(f"Redis URL {mask_url(url)}: {name} must be an integer from {low} to {high}, not {raw!r}")
    return value


def _sentinel_target(url: str, tls: bool, options: dict[str, str]) -> SentinelTarget:
    def wrong(what: str) -> InvalidRequest:
        return InvalidRequest(
            f"Redis URL {mask_url(url)}: {what} (expected "
            "redis+sentinel://[user:password@]host[:port][,host[:port]...]/service-name[/db])"
        )

    unknown = sorted(set(options) - set(_SENTINEL_OPTIONS))
    if unknown:
        raise wrong(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(_SENTINEL_OPTIONS + _WAIT_OPTIONS)}")
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = tuple(_sentinel_address(host, wrong) for host in hosts.split(","))
    path = [piece for piece in parts.path.split("/") if piece]
    if not path or len(path) > 2:
        raise wrong("no service name" if not path else f"too many path parts in {parts.path!r}")
    if len(path) == 2 and not path[1].isdigit():
        raise wrong(f"the database must be a number, not {path[1]!r}")
    return SentinelTarget(
        sentinels=sentinels,
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        tls=tls,
        username=unquote(username) or None,
        password=unquote(password) if userinfo and ":" in userinfo else None,
        sentinel_username=options.get("sentinel_username"),
        sentinel_password=options.get("sentinel_password"),
        ssl={k: v for k, v in options.items() if k in _SSL_OPTIONS},
    )


def _sentinel_address(host: str, wrong: Callable[[str], InvalidRequest]) -> tuple[str, int]:
    match = _HOST.match(host.strip())
    if match is None:
        raise wrong(f"no Sentinel address in {host!r}")
    port = int(match["port"] or DEFAULT_SENTINEL_PORT)
    if not 0 < port < 65536:
        raise wrong(f"port {port} is out of range")
    return match["v6"] or match["name"], port
