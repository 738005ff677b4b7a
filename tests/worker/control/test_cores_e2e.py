"""A host agent divides its cores among the workers it runs: real agent, real workers, real llama.cpp."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from cluster import Cluster, workers_of

pytestmark = pytest.mark.e2e

CORES = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()


def thread_cores(process: psutil.Process) -> set[tuple[int, ...]]:
    """The distinct affinity masks of a process's threads."""
    masks = set()
    for thread in process.threads():
        try:
            masks.add(tuple(sorted(os.sched_getaffinity(thread.id))))
        except OSError:
            continue  # ended meanwhile
    return masks


def worker_cores(cluster: Cluster, count: int) -> dict[int, tuple[int, ...]] | None:
    """Each worker's one affinity (every thread the same), once `count` workers run."""
    workers = workers_of(cluster.url)
    if len(workers) != count:
        return None
    found = {}
    for worker in workers:
        masks = thread_cores(worker)
        if len(masks) != 1:
            return None
        found[worker.pid] = next(iter(masks))
    return found


@pytest.mark.skipif(len(CORES) < 2, reason="dividing cores needs at least two")
def test_two_workers_run_on_disjoint_cores_and_one_left_alone_gets_them_all(
    cluster: Cluster, tmp_path: Path, model_files: dict[str, Path]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("tiny-a", "tiny-b"):
        (models / f"{name}.gguf").symlink_to(model_files["tiny"])
    cluster.host("solo", models, 8 * 1024**3)
    cluster.controller()
    client = cluster.client
    for model in ("tiny-a", "tiny-b"):
        assert client.complete(model, "Once upon a time", max_tokens=4).text

    def disjoint() -> dict[int, tuple[int, ...]] | None:
        shares = worker_cores(cluster, 2)
        if shares is None:
            return None
        a, b = shares.values()
        return shares if not set(a) & set(b) and sorted(a + b) == list(CORES) else None

    cluster.wait_for(disjoint, "two workers on disjoint cores that cover the agent's", timeout=30)
    # Threads a worker starts later (llama.cpp's) keep its share: generate again, then look.
    assert client.complete("tiny-a", "Once upon a time", max_tokens=16).text
    assert disjoint() is not None, worker_cores(cluster, 2)

    client.unload("tiny-b")
    alone = cluster.wait_for(
        lambda: (shares := worker_cores(cluster, 1)) and next(iter(shares.values())) == CORES and shares,
        "the worker left alone to get every core",
        timeout=30,
    )
    assert alone
    assert client.complete("tiny-a", "Once upon a time", max_tokens=16).text
