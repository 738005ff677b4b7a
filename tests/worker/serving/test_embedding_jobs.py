"""Embedding jobs in the worker loop, with the fake engine (which has no embeddings) on real Redis.

The real engine's jobs, served between generation steps, are test_embeddings_e2e.py's.
"""

from __future__ import annotations

import pytest
from hostler import Client
from hostler.client import JobFailed
from hostler.worker.serving.worker import ModelWorker


def test_an_engine_without_embeddings_fails_the_job_by_name_and_the_worker_goes_on(
    served: tuple[Client, ModelWorker],
) -> None:
    client, worker = served
    with pytest.raises(JobFailed) as failed:
        client.embed("tiny", ["a text"])
    assert failed.value.code == "embeddings_unsupported"
    assert "FakeEngine engine does not compute embeddings" in str(failed.value)
    assert "GGUF" in str(failed.value)
    assert client.count_tokens("tiny", "a b") == 3
    assert not worker.embeddings
