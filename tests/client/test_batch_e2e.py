"""`hostler batch`: OpenAI Batch files through real workers, bad lines, kill and resume.

Parsing the lines and reading what is done are test_batch.py's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from batch_lines import chat_line
from conftest import Stack
from hostler import Client
from hostler.client.batch import job_id_for

pytestmark = pytest.mark.e2e


def _batch(url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hostler.worker", "batch", "run", "--redis", url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _outputs(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_batch_with_bad_lines_runs_the_valid_ones(stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    lines = [
        chat_line("ok-1", "Say hi", max_tokens=8, temperature=0),
        "this is not json",
        chat_line("ok-2", "Say bye", max_tokens=8, temperature=0),
        chat_line("ok-2", "duplicate", max_tokens=8),
        chat_line("ghost", "who", model="no-such-model"),
        json.dumps(
            {
                "custom_id": "c-1",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0},
            }
        ),  # fmt: skip
        chat_line("neg", "x", max_tokens=-5),
    ]
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.jsonl"
    run = _batch(stack.url, str(source), "-o", str(output))
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    records = {r["custom_id"]: r for r in _outputs(output)}
    assert sorted(records) == ["c-1", "ok-1", "ok-2"]
    for record in records.values():
        response = record["response"]
        assert isinstance(response, dict) and response["status_code"] == 200 and record["error"] is None
    chat_body = records["ok-1"]["response"]["body"]  # type: ignore[index]
    assert chat_body["object"] == "chat.completion"
    expected = stack.client.chat("tiny", [{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0)
    assert chat_body["choices"][0]["message"]["content"] == expected.text
    assert chat_body["usage"]["completion_tokens"] == expected.usage.completion_tokens
    completion_body = records["c-1"]["response"]["body"]  # type: ignore[index]
    assert (
        completion_body["choices"][0]["text"]
        == stack.client.complete("tiny", "Once upon a time", max_tokens=6, temperature=0).text
    )
    errors = _outputs(tmp_path / "out.errors.jsonl")
    assert [e["line"] for e in errors] == [2, 4, 5, 7]
    for line in (2, 4, 5, 7):
        assert f"line {line}:" in err
    assert "no-such-model" in json.dumps(errors[2])
    assert "3 finished" in out and "4 bad" in out


def test_killed_batch_resumes_without_running_a_line_twice(stack: Stack, tmp_path: Path) -> None:
    n = 40
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(chat_line(f"doc-{i}", f"Summarize item {i}", max_tokens=48, temperature=0) + "\n" for i in range(n))
    )
    output = tmp_path / "out.jsonl"
    stack.client.load("tiny")
    # The load is the worker's first job; wait until its report counts it.
    _wait_for(lambda: _jobs_done(stack.client) == 1)
    done_before = 1

    first = _batch(stack.url, str(source), "-o", str(output), "--max-in-flight", "6")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_outputs(output) if output.exists() else []) < 10:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    written = len(_outputs(output))
    assert 10 <= written < n, "the batch finished before it could be killed"

    second = _batch(stack.url, str(source), "-o", str(output), "--max-in-flight", "6")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    ids = [r["custom_id"] for r in _outputs(output)]
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(n)) and len(ids) == n
    assert f"{written} already done" in out or f"{written - 1} already done" in out

    # The workers ran each line once: one stored result per job, and n jobs counted in all.
    batch_id = out.split(":", 1)[0].strip()
    for i in range(n):
        assert stack.client.connection.xlen(f"rq:results:{job_id_for(batch_id, f'doc-{i}')}") == 1
    _wait_for(
        lambda: _jobs_done(stack.client) - done_before == n,
        message=lambda: f"{_jobs_done(stack.client) - done_before} jobs done",
    )

    status = subprocess.run(
        [sys.executable, "-m", "hostler.worker", "batch", "status", batch_id, "--redis", stack.url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    state = json.loads(status.stdout)
    assert state["requests"] == n and state["states"]["finished"] == n


def _jobs_done(client: Client) -> int:
    return sum(w.jobs_done for w in client.status().workers if w.model == "tiny")


def _wait_for(condition: Callable[[], bool], timeout: float = 15.0, message: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message()
        time.sleep(0.2)
