"""The memory estimate against the RSS llama.cpp really adds, on Gemma 3 270M (scripts/measure_memory.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.e2e

MiB = 1024**2


def test_estimate_matches_measured_rss_of_gemma3(gemma3: Path) -> None:
    errors = {}
    for n_ctx, n_parallel in ((2048, 1), (2048, 8), (8192, 8)):
        command = [sys.executable, str(ROOT / "scripts" / "measure_memory.py"), str(gemma3)]
        result = subprocess.run(
            [*command, "--n-ctx", str(n_ctx), "--n-parallel", str(n_parallel)],
            capture_output=True,
            text=True,
            timeout=240,
            check=True,
        )
        report = json.loads(result.stdout.strip().splitlines()[-1])
        errors[(n_ctx, n_parallel)] = report["error"]
        print(
            f"\ngemma3-270m n_ctx={n_ctx} slots={n_parallel}: estimate {report['estimate']['total'] / MiB:.1f} MiB, "
            f"measured {report['measured_rss_increase'] / MiB:.1f} MiB, error {report['error']:+.1%}"
        )
    # Every slot's KV cache is counted: the estimate stays within 15% with slots too.
    assert all(abs(error) <= 0.15 for error in errors.values()), errors
