"""OpenAI's spellings of structured output and logprobs, mapped onto SamplingParams and back into
response bodies (schemas/_openai.py, shared by the gateway and `hostler batch`)."""

from __future__ import annotations

from typing import Any

import pytest
from hostler.schemas import CompletionResult, TokenLogprob, TopLogprob, Usage, parse_body, response_body

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
TEXT = {"model": "tiny", "prompt": "hi"}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def sampling(url: str, body: dict[str, Any]) -> dict[str, Any]:
    return parse_body(url, body).sampling()


def test_response_formats_become_a_json_schema_and_text_stays_free() -> None:
    json_schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}}
    assert sampling("/v1/chat/completions", {**CHAT, "response_format": json_schema})["json_schema"] == SCHEMA
    assert sampling("/v1/completions", {**TEXT, "response_format": json_schema})["json_schema"] == SCHEMA
    as_object = sampling("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_object"}})
    assert as_object["json_schema"] == {"type": "object"}
    no_schema = {"type": "json_schema", "json_schema": {"name": "a"}}
    assert sampling("/v1/chat/completions", {**CHAT, "response_format": no_schema})["json_schema"] == {"type": "object"}
    assert "json_schema" not in sampling("/v1/chat/completions", {**CHAT, "response_format": {"type": "text"}})
    assert sampling("/v1/completions", {**TEXT, "grammar": 'root ::= "x"'})["grammar"] == 'root ::= "x"'


def test_logprobs_as_each_endpoint_spells_them() -> None:
    assert sampling("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 4})["logprobs"] == 4
    assert sampling("/v1/chat/completions", {**CHAT, "logprobs": True})["logprobs"] == 0
    assert "logprobs" not in sampling("/v1/chat/completions", {**CHAT, "logprobs": False})
    assert sampling("/v1/completions", {**TEXT, "logprobs": 0})["logprobs"] == 0
    assert "logprobs" not in sampling("/v1/completions", TEXT)


@pytest.mark.parametrize(
    ("url", "extra", "problem"),
    [
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs needs logprobs: true"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": 1}, "logprobs"),
        ("/v1/completions", {"logprobs": 21}, "logprobs"),
        ("/v1/completions", {"logprobs": True}, "logprobs"),
        ("/v1/chat/completions", {"response_format": {"type": "json_schema"}}, "json_schema is required"),
        ("/v1/chat/completions", {"response_format": {"type": "json_object", "json_schema": {"name": "a"}}}, "only"),
        ("/v1/chat/completions", {"response_format": {"type": "xml"}}, "response_format.type"),
        ("/v1/chat/completions", {"response_format": "json"}, "response_format"),
    ],
)
def test_bad_spellings_are_refused_naming_the_field(url: str, extra: dict[str, Any], problem: str) -> None:
    body = {**(CHAT if "chat" in url else TEXT), **extra}
    with pytest.raises(ValueError, match=problem):
        parse_body(url, body)


def _result(logprobs: list[TokenLogprob] | None) -> CompletionResult:
    return CompletionResult(
        model="tiny", text="Hi there", finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=2),
        logprobs=logprobs,
    )  # fmt: skip


def test_response_bodies_spell_logprobs_as_openai_does() -> None:
    hi = TopLogprob(token="Hi", logprob=-0.5, bytes=[72, 105])
    you = TopLogprob(token=" you", logprob=-1.0, bytes=list(b" you"))
    tokens = [
        TokenLogprob(token="Hi", logprob=-0.5, bytes=[72, 105], top_logprobs=[hi]),
        TokenLogprob(token=" there", logprob=-1.5, bytes=list(b" there"), top_logprobs=[you]),
    ]
    chat = response_body("chat", _result(tokens), "id")["choices"][0]["logprobs"]
    assert chat["content"][1] == {
        "token": " there",
        "logprob": -1.5,
        "bytes": list(b" there"),
        "top_logprobs": [{"token": " you", "logprob": -1.0, "bytes": list(b" you")}],
    }
    text = response_body("completion", _result(tokens), "id")["choices"][0]["logprobs"]
    assert text == {
        "tokens": ["Hi", " there"],
        "text_offset": [0, 2],
        "token_logprobs": [-0.5, -1.5],
        "top_logprobs": [{"Hi": -0.5}, {" you": -1.0, " there": -1.5}],
    }
    assert response_body("chat", _result(None), "id")["choices"][0]["logprobs"] is None
