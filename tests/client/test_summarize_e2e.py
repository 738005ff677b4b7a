"""`hostler summarize`: 30 documents through two real workers of SmolLM2, one far past the context."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from cluster import Cluster

pytestmark = pytest.mark.e2e

# Each summary waits for a CPU generation over a 512-token context.
CLUSTER_CLIENT_TIMEOUT = 300.0
CONTEXT = 512
PLACES = ["Arden", "Brill", "Coldwater", "Dunmore", "Elsby", "Fairhaven", "Glenrock", "Harlow"]
GOODS = ["wheat", "barley", "wool", "timber", "cheese", "apples", "salt", "iron"]


def _paragraph(rng: random.Random) -> str:
    place, good = rng.choice(PLACES), rng.choice(GOODS)
    year, amount = rng.randint(1850, 1950), rng.randint(10, 900)
    return (
        f"In {year} the town of {place} produced {amount} tons of {good}. "
        f"The council of {place} used the income to repair the bridge and the school. "
        f"Traders from {rng.choice(PLACES)} bought most of the {good} at the autumn market."
    )


def _documents(folder: Path) -> dict[str, int]:
    """30 documents of mixed lengths; returns paragraphs per file name."""
    rng = random.Random(7)
    sizes = {f"doc-{i:02d}.md" if i % 3 else f"doc-{i:02d}.txt": rng.choice([1, 2, 3]) for i in range(29)}
    sizes["long.md"] = 30  # about 1,600 tokens: three times the 512-token context
    for name, paragraphs in sizes.items():
        text = "\n\n".join(_paragraph(rng) for _ in range(paragraphs))
        (folder / name).write_text(f"# Report {name}\n\n{text}\n")
    return sizes


@pytest.mark.timeout(900)
def test_thirty_documents_through_two_workers(cluster: Cluster, tmp_path: Path, smollm2: Path) -> None:
    for host in ("h1", "h2"):
        folder = tmp_path / host
        folder.mkdir()
        (folder / "sm.gguf").symlink_to(smollm2)
        cluster.host(host, folder, 4 * 2**30)
    cluster.controller()
    cluster.client.load("sm", replicas=2, n_ctx=CONTEXT)
    cluster.wait_for(lambda: len(cluster.loaded_on("sm")) == 2 or None, "two workers of sm", timeout=120)

    docs = tmp_path / "docs"
    docs.mkdir()
    sizes = _documents(docs)
    output = tmp_path / "summaries.jsonl"
    command = [sys.executable, "-m", "hostler.worker", "summarize", str(docs), "--model", "sm", "-o", str(output)]
    run = subprocess.run([*command, "--redis", cluster.url, "--max-tokens", "32"], capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr + cluster.output()
    records = {Path(r["id"]).name: r for r in map(json.loads, output.read_text().splitlines())}
    assert sorted(records) == sorted(sizes)
    assert all(r["summary"].strip() and r["error"] is None for r in records.values())
    long = records["long.md"]
    assert long["document_tokens"] > 2.5 * CONTEXT, long["document_tokens"]
    assert long["pieces"] > 1 and long["levels"] >= 2
    assert all(r["pieces"] == 1 and r["levels"] == 1 for name, r in records.items() if name != "long.md")
    # Both workers served the run.
    done = [w.jobs_done for w in cluster.client.status().workers if w.model == "sm"]
    assert len(done) == 2 and min(done) > 1

    again = subprocess.run([*command, "--redis", cluster.url, "--max-tokens", "32"], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert again.returncode == 0 and "0 summarized, 0 failed, 30 already done" in again.stdout
