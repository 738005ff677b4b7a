"""client.pull with nobody to pull: no live host agent (test_pull_client_e2e.py: through a running one)."""

from __future__ import annotations

import pytest
from hostler import Client, HostlerError

REPO = "tester/Tiny-GGUF"


def test_without_a_live_host_there_is_nobody_to_pull(redis_url: str) -> None:
    with Client(redis_url) as client, pytest.raises(HostlerError, match="no live host to pull on"):
        client.pull(REPO)
