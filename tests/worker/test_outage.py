"""OutageGuard: keys others renew are judged only once the server answering has been the same
server for a while (a failover or a hidden restart is another server, told by its run_id)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
import redis_proc
from hostler.worker.outage import OutageGuard


def test_another_server_answering_is_an_outage_to_settle(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = OutageGuard()
    first = redis.Redis.from_url(redis_url)
    assert guard.recovered(first) and guard.recovered(first)
    with redis_proc.redis_server(tmp_path / "other") as port:
        promoted = redis.Redis(port=port)
        # Same connection settings, another server: what a client sees after a failover.
        assert not guard.recovered(promoted)
        assert not guard.settled(promoted)
        now = time.monotonic()
        # One settle period later (SETTLE_S is 12 s) it is trusted again.
        monkeypatch.setattr("hostler.worker.outage.time.monotonic", lambda: now + 13)
        assert guard.recovered(promoted)
        promoted.close()
    first.close()
