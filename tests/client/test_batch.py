"""`hostler batch` without workers: each bad line of a Batch file named, a torn output line dropped."""

from __future__ import annotations

import json
from pathlib import Path

from batch_lines import chat_line
from hostler.client.batch import job_id_for, parse_lines, read_done


def test_parse_reports_each_bad_line_with_its_number() -> None:
    lines = [
        chat_line("a", "hi"),
        "{not json",
        json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),
        chat_line("a", "again"),
        json.dumps({"custom_id": "u", "method": "POST", "url": "/v1/moderations", "body": {"model": "tiny"}}),
        chat_line("t", "hot", temperature=99),
        chat_line("n", "many", n=3),
        "",
        json.dumps(
            {"custom_id": "p", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": "x"}}
        ),
    ]
    requests, bad = parse_lines(lines)
    assert [r.custom_id for r in requests] == ["a", "p"]
    assert [(b.line, b.custom_id) for b in bad] == [(2, None), (3, None), (4, "a"), (5, "u"), (6, "t"), (7, "n")]
    messages = [b.message for b in bad]
    assert "not JSON" in messages[0]
    assert "custom_id" in messages[1]
    assert "duplicate custom_id 'a' (first on line 1)" in messages[2]
    assert "unknown url '/v1/moderations'" in messages[3]
    assert "temperature" in messages[4]
    assert "n=3" in messages[5]


def test_read_done_drops_a_torn_last_line(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_text(json.dumps({"custom_id": "a"}) + "\n" + '{"custom_id": "b", "resp')
    assert read_done(output) == {"a"}
    assert output.read_text().endswith("}\n")
    assert job_id_for("batch_x", "a/b c") == job_id_for("batch_x", "a/b c") != job_id_for("batch_x", "a/b d")
