"""Lines of an OpenAI Batch input file, as a user writes them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def chat_line(custom_id: str, text: str, model: str = "tiny", **body: object) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
        }
    )


def run_batch(
    redis_url: str, lines: list[str], folder: Path, *, timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, Any]]]:
    """`hostler batch run` over `lines` to the end: the finished process and its output records
    by custom_id."""
    source, output = folder / "in.jsonl", folder / "out.jsonl"
    source.write_text("\n".join(lines) + "\n")
    run = subprocess.run(
        [sys.executable, "-m", "hostler.worker", "batch", "run", "--redis", redis_url, str(source), "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    records = {r["custom_id"]: r for r in map(json.loads, output.read_text().splitlines())} if output.exists() else {}
    return run, records
