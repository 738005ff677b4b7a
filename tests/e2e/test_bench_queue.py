"""scripts/bench_queue.py as the README runs it (--quick, on Gemma 3): it must still compare like
with like after the worker changes its defaults.

When slots came, the worker began to run 2 threads, 8 slots and kept prompts while the script's
in-process side ran llama-cpp-python's 1 thread from an empty KV cache; Gemma's temperature-0 texts
then differed on every prompt and the script exited 1, unseen, because nothing ran it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.e2e


def test_bench_queue_quick_run_matches_in_process_texts_and_threads(gemma3: Path, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_queue.py"), "--quick", "--models", "gemma3-270m"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    row = re.search(r"^\| gemma3-270m \|(.+)\|$", run.stdout, re.MULTILINE)
    assert row, output[-4000:]
    cells = [cell.strip() for cell in row.group(1).split("|")]
    assert cells[-1] == "3/3", row.group(0)  # every queued text equals the in-process one
    ratio = float(cells[2])
    # Same engine, same threads: the queue costs a few percent at most, and gains nothing it could
    # only get from more threads or kept prompts (the broken comparison measured 1.6x).
    assert 0.7 < ratio < 1.3, row.group(0)
    assert "Threads on both sides (n_threads/n_threads_batch): " in run.stdout
    threads = re.search(r"n_threads_batch\): (\d+)/(\d+)", run.stdout)
    assert threads and threads.group(1) == threads.group(2), output[-2000:]
