"""Structured output and logprobs through the Python clients (sync and async) and `hostler batch`,
on a real `hostler up` with the tiny random GGUF; a grammar only a worker can judge fails that job
alone, and the worker goes on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from batch_lines import chat_line, run_batch
from conftest import Stack
from hostler import AsyncClient, InvalidRequest, JobFailed, Piece
from hostler.client import _grammar
from structured_cases import MAX_TOKENS, SCHEMAS, check

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Reply in JSON."}]


def test_json_schema_and_grammar_on_every_method_of_the_sync_client(stack: Stack) -> None:
    client = stack.client
    schema = SCHEMAS[0]
    check(client.complete("tiny", "Once", json_schema=schema, max_tokens=MAX_TOKENS, seed=3).text, schema)
    check(client.chat("tiny", MESSAGES, json_schema=schema, max_tokens=MAX_TOKENS, seed=4).text, schema)
    with client.stream("tiny", "Once", json_schema=SCHEMAS[2], max_tokens=MAX_TOKENS, seed=5) as stream:
        check("".join(stream), SCHEMAS[2])
    handle = client.submit("tiny", "Once", grammar='root ::= "ok" [0-9]', max_tokens=8, seed=6)
    result = handle.result(timeout=60)
    assert len(result.text) == 3 and result.text.startswith("ok") and result.text[2].isdigit()
    with pytest.raises(InvalidRequest, match="Undefined rule identifier 'nowhere'"):
        client.complete("tiny", "Once", grammar="root ::= nowhere", max_tokens=4)


def test_the_async_client_streams_constrained_pieces_with_their_logprobs(stack: Stack) -> None:
    async def run() -> None:
        async with AsyncClient(stack.url, timeout=120) as client:
            texts = await asyncio.gather(
                *(
                    client.chat("tiny", MESSAGES, json_schema=schema, max_tokens=MAX_TOKENS, seed=seed)
                    for seed, schema in enumerate(SCHEMAS)
                )
            )
            for result, schema in zip(texts, SCHEMAS, strict=True):
                check(result.text, schema)
            stream = await client.stream("tiny", "Once upon a time", max_tokens=12, temperature=0, logprobs=2)
            pieces: list[Piece] = [piece async for piece in stream]
            whole = await client.complete("tiny", "Once upon a time", max_tokens=12, temperature=0, logprobs=2)
            assert stream.result is not None and stream.result.logprobs is not None
            tokens = [token for piece in pieces for token in piece.logprobs or ()]
            assert whole.logprobs is not None and len(whole.logprobs) == 12
            assert (
                [t.token for t in tokens]
                == [t.token for t in whole.logprobs]
                == [t.token for t in stream.result.logprobs]
            )
            assert "".join(t.token for t in tokens) == whole.text == "".join(pieces)
            assert [t.logprob for t in tokens] == pytest.approx([t.logprob for t in whole.logprobs], abs=1e-6)
            assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob for t in tokens)
            plain = await client.complete("tiny", "Once upon a time", max_tokens=4)
            assert plain.logprobs is None

    asyncio.run(run())


def test_the_sync_stream_s_pieces_carry_the_tokens_whose_text_they_hold(stack: Stack) -> None:
    with stack.client.stream("tiny", "Once upon a time", max_tokens=10, temperature=0, logprobs=0) as stream:
        pieces = list(stream)
    assert all(isinstance(piece, Piece) and piece.logprobs for piece in pieces)
    for piece in pieces:
        assert "".join(t.token for t in piece.logprobs or ()) == piece
        assert all(t.top_logprobs == [] and t.logprob <= 0 for t in piece.logprobs or ())


def test_a_bad_grammar_fails_its_job_in_the_worker_and_the_worker_goes_on(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client without llama-cpp-python checks nothing: the worker judges the grammar.
    monkeypatch.setattr(_grammar, "llama_available", lambda: False)
    with pytest.raises(JobFailed, match="invalid grammar: Undefined rule identifier 'nowhere'") as raised:
        stack.client.complete("tiny", "Once", grammar="root ::= nowhere", max_tokens=4)
    assert raised.value.code == "invalid_request"
    with pytest.raises(JobFailed, match="llama.cpp's converter cannot handle this schema"):
        stack.client.chat("tiny", MESSAGES, json_schema={"type": "strin"}, max_tokens=4)
    check(stack.client.complete("tiny", "Once", json_schema=SCHEMAS[1], max_tokens=MAX_TOKENS).text, SCHEMAS[1])


def test_hostler_batch_lines_carry_response_format_and_logprobs(stack: Stack, tmp_path: Path) -> None:
    lines = [
        chat_line(f"s-{i}", "Reply in JSON.", max_tokens=MAX_TOKENS, seed=i, response_format=_format(schema))
        for i, schema in enumerate(SCHEMAS)
    ]
    lines.append(chat_line("lp", "Hello", max_tokens=6, temperature=0, logprobs=True, top_logprobs=1))
    lines.append(chat_line("bad", "x", response_format=_format({"type": "strin"})))
    run, records = run_batch(stack.url, lines, tmp_path)
    assert run.returncode == 0, run.stderr
    for i, schema in enumerate(SCHEMAS):
        check(records[f"s-{i}"]["response"]["body"]["choices"][0]["message"]["content"], schema)
    content = records["lp"]["response"]["body"]["choices"][0]["logprobs"]["content"]
    assert len(content) == 6 and all(len(t["top_logprobs"]) == 1 for t in content)
    errors = [json.loads(line) for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and "Unrecognized schema" in json.dumps(errors[0])


def _format(schema: dict[str, object]) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
