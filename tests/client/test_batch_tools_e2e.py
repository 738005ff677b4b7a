"""`hostler batch run` lines with tools: the output holds OpenAI's tool_calls, as the gateway's do."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from batch_lines import chat_line
from conftest import Stack, start_stack, stop_stack
from tool_templates import tool_model

pytestmark = pytest.mark.e2e

# Bounded values only: the tiny model's random weights would write a free string forever.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"count": {"type": "integer"}, "unit": {"enum": ["meters", "feet"]}},
    "required": ["count", "unit"],
    "additionalProperties": False,
}
MEASURE = {"type": "function", "function": {"name": "measure", "parameters": SCHEMA}}


@pytest.fixture
def tiny_tools(redis_url: str, tmp_path: Path, model_files: dict[str, Path]) -> Iterator[Stack]:
    models = tmp_path / "models"
    models.mkdir()
    tool_model(models, "tiny-tools", model_files["tiny"], bos=True)
    running = start_stack(redis_url, models, tmp_path / "up.log")
    try:
        yield running
    finally:
        stop_stack(running)


def test_batch_lines_with_tools_answer_with_tool_calls(tiny_tools: Stack, tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    named = {"type": "function", "function": {"name": "measure"}}
    lines = [
        chat_line("forced", "How far?", model="tiny-tools", tools=[MEASURE], tool_choice=named, max_tokens=160, seed=1),
        chat_line("free", "How far?", model="tiny-tools", tools=[MEASURE], max_tokens=6, temperature=0),
    ]
    source.write_text("\n".join(lines) + "\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "hostler.worker",
            "batch",
            "run",
            "--redis",
            tiny_tools.url,
            str(source),
            "-o",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    records = {r["custom_id"]: r for r in map(json.loads, output.read_text().splitlines())}
    forced = records["forced"]["response"]["body"]["choices"][0]
    assert forced["finish_reason"] == "tool_calls" and forced["message"]["content"] is None
    (call,) = forced["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["function"]["name"] == "measure"
    jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMA)
    # auto: random weights write no call, so the reply is plain text.
    free = records["free"]["response"]["body"]["choices"][0]
    assert "tool_calls" not in free["message"] and free["message"]["content"] and free["finish_reason"] == "length"
