"""client.pull: a host agent downloads from the hub (a local server at HF_ENDPOINT) and reports progress."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stack, start_stack, stop_stack
from hostler import HostlerError, InvalidRequest
from hostler.client import _pull
from hostler.schemas import PullProgressEvent
from local_hub import LocalHub, serve_hub

pytestmark = pytest.mark.e2e

REPO = "tester/Tiny-GGUF"


@pytest.fixture
def hub_stack(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, models_dir: Path, tmp_path: Path, model_files: dict[str, Path]
) -> Iterator[tuple[LocalHub, Stack]]:
    with serve_hub() as hub:
        hub.add(REPO, {"tiny-chat-Q4_K_M.gguf": model_files["tiny"], "tiny-chat-Q8_0.gguf": model_files["tiny-base"]})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the stack's host agent inherits it
        stack = start_stack(redis_url, models_dir, tmp_path / "up.log")
        try:
            yield hub, stack
        finally:
            stop_stack(stack)


def test_pull_through_the_host_agent_with_progress(hub_stack: tuple[LocalHub, Stack], models_dir: Path) -> None:
    hub, stack = hub_stack
    events: list[PullProgressEvent] = []
    result = stack.client.pull(REPO, quant="Q4_K_M", model_id="from-hub", progress=events.append, timeout=120)
    assert (result.model_id, result.host, result.already) == ("from-hub", "testhost", False)
    assert result.files == ["tiny-chat-Q4_K_M.gguf"] and Path(result.path) == models_dir / "from-hub"
    size = (models_dir / "from-hub" / "tiny-chat-Q4_K_M.gguf").stat().st_size
    assert result.size_bytes == size and events and events[-1].done == events[-1].total == size
    assert all(e.host == "testhost" for e in events)
    # Done means listed: the model can be used at once.
    reply = stack.client.complete("from-hub", "Once upon a time", max_tokens=4, temperature=0)
    assert reply.usage.completion_tokens >= 1
    again = stack.client.pull(REPO, quant="Q4_K_M", model_id="from-hub", timeout=120)
    assert again.already and len(hub.downloads("tiny-chat-Q4_K_M.gguf")) == 1


def test_pull_errors_reach_the_client(hub_stack: tuple[LocalHub, Stack]) -> None:
    _, stack = hub_stack
    with pytest.raises(HostlerError, match="pull of tester/nope on testhost failed: no model repo 'tester/nope'"):
        stack.client.pull("tester/nope", timeout=60)
    with pytest.raises(HostlerError, match="matches 2 GGUF files|choose one with --quant"):
        stack.client.pull(REPO, timeout=60)
    with pytest.raises(InvalidRequest, match="host 'elsewhere' is not live; live hosts: testhost"):
        stack.client.pull(REPO, host="elsewhere")
    with pytest.raises(InvalidRequest, match="model_id"):
        stack.client.pull(REPO, model_id="../x")


def test_a_host_that_does_not_answer_is_reported_and_the_request_withdrawn(
    hub_stack: tuple[LocalHub, Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, stack = hub_stack
    monkeypatch.setattr(_pull, "SILENCE_LIMIT_S", 2.0)
    os.killpg(stack.process.pid, signal.SIGSTOP)  # its report lives on for a few seconds
    try:
        with pytest.raises(HostlerError, match="host testhost did not take the pull of tester/Tiny-GGUF"):
            stack.client.pull(REPO, quant="Q8_0", timeout=30)
        assert stack.client.connection.llen(stack.keys.pulls("testhost")) == 0
    finally:
        os.killpg(stack.process.pid, signal.SIGCONT)
