"""The memory estimate against what a worker really holds: llama.cpp on Gemma 3 270M (scripts/measure_memory.py),
mlx-lm on the tiny MLX folder and on SmolLM2 as an MLX folder (scripts/measure_mlx_memory.py)."""

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


@pytest.mark.parametrize(
    ("model", "n_ctx", "slots"),
    [("tiny", 2048, 1), ("tiny", 2048, 8), ("smollm2", 256, 4)],
    ids=["tiny-1-slot", "tiny-8-slots", "smollm2-4-slots"],
)
def test_mlx_estimate_covers_the_peak_with_every_slot_full(
    model: str, n_ctx: int, slots: int, tiny_mlx: Path, smollm2_mlx: Path
) -> None:
    # Every slot's prompt fills its context; mlx-lm prefills them together, a chunk of each per
    # step, and frees each chunk's buffers, so the estimate is held against the peak RSS.
    folder = {"tiny": tiny_mlx, "smollm2": smollm2_mlx}[model]
    command = [sys.executable, str(ROOT / "scripts" / "measure_mlx_memory.py"), str(folder), "--fill"]
    command += ["--n-ctx", str(n_ctx), "--slots", str(slots)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"\n{folder.name} n_ctx={n_ctx} slots={slots}: need {report['need'] / MiB:.1f} MiB, "
        f"peak {report['peak_rss'] / MiB:.1f} MiB, error {report['peak_error']:+.1%}"
    )
    assert report["prompt_tokens"] > n_ctx * 3 // 4
    assert abs(report["peak_error"]) <= 0.15, report
