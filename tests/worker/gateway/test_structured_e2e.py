"""Structured output and logprobs through the official openai SDK, a `hostler gateway` process and
real workers: the tiny random GGUF (whose replies only a grammar can make JSON), SmolLM2, and the
tiny MLX model (which refuses both). Logprobs are compared with llama-cpp-python in-process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
from conftest import Stack, running_stack
from gateway_proc import Gateway, Gateways
from hostler.worker.engines.llama_cpu import safe_llama_defaults
from llama_cpp import Llama
from structured_cases import MAX_TOKENS, SCHEMAS, check

pytestmark = pytest.mark.e2e

ASK = [{"role": "user", "content": "Reply in JSON."}]
PROMPT = "Once upon a time"
# In-process llama-cpp-python as the worker computes: flash attention on (llama.cpp's auto picks it
# on a CPU; the worker's default), logits_all (which create_completion needs for logprobs). Measured:
# equal to the bit on SmolLM2 and the tiny model; the tolerance leaves room for a BLAS's rounding.
IN_PROCESS = {"n_ctx": 2048, "logits_all": True, "flash_attn": True, "verbose": False}
TOLERANCE = {"rel": 1e-5, "abs": 1e-5}


@pytest.fixture
def gateway(stack: Stack, gateways: Gateways) -> Gateway:
    return gateways.start(stack.url)


def sdk(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120)


def schema_format(schema: dict[str, Any], name: str = "reply") -> Any:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def test_every_sampled_reply_of_a_random_model_parses_and_validates(gateway: Gateway) -> None:
    client = sdk(gateway)
    for index, schema in enumerate(SCHEMAS):
        for seed in (1, 2):
            reply = client.chat.completions.create(
                model="tiny",
                messages=ASK,  # type: ignore[arg-type]
                response_format=schema_format(schema),
                temperature=1.0,
                seed=seed + 10 * index,
                max_tokens=MAX_TOKENS,
            )
            choice = reply.choices[0]
            assert choice.finish_reason == "stop", (schema, choice.message.content)
            check(choice.message.content or "", schema)
        text = client.completions.create(
            model="tiny",
            prompt=PROMPT,
            max_tokens=MAX_TOKENS,
            temperature=0.7,
            seed=index,
            extra_body={"response_format": schema_format(schema)},
        )
        assert text.choices[0].finish_reason == "stop"
        check(text.choices[0].text, schema)


def test_eight_concurrent_streams_in_one_worker_each_keep_their_own_schema(gateway: Gateway, stack: Stack) -> None:
    async def one(client: openai.AsyncOpenAI, schema: dict[str, Any], seed: int) -> str:
        stream = await client.chat.completions.create(
            model="tiny",
            messages=ASK,  # type: ignore[arg-type]
            response_format=schema_format(schema, f"schema{seed}"),
            temperature=1.0,
            seed=seed,
            max_tokens=MAX_TOKENS,
            stream=True,
        )
        parts = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        return "".join(parts)

    async def all_at_once() -> list[str]:
        client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120)
        try:
            return await asyncio.gather(*(one(client, schema, seed) for seed, schema in enumerate(SCHEMAS)))
        finally:
            await client.close()

    for _round in range(2):
        texts = asyncio.run(all_at_once())
        for text, schema in zip(texts, SCHEMAS, strict=True):
            check(text, schema)
    # One worker served them all, eight at a time.
    workers = [w for w in stack.client.status().workers if w.model == "tiny"]
    assert len(workers) == 1 and workers[0].slots == 8


def test_json_object_and_a_raw_grammar(gateway: Gateway) -> None:
    client = sdk(gateway)
    reply = client.chat.completions.create(
        model="tiny",
        messages=ASK,  # type: ignore[arg-type]
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=64,
    )
    # A random model never closes a free-form object by itself: what it wrote is a JSON object's start.
    content = reply.choices[0].message.content or ""
    assert content.startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    grammar = 'root ::= ("yes" | "no") " " [0-9] [0-9]?'
    for seed in range(4):
        text = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=16, temperature=1.0, seed=seed, extra_body={"grammar": grammar}
        )
        words = text.choices[0].text.split(" ")
        assert words[0] in ("yes", "no") and words[1].isdigit() and len(words[1]) <= 2, text.choices[0].text


def test_bad_schemas_grammars_and_logprobs_are_400s_naming_the_problem(gateway: Gateway) -> None:
    client = sdk(gateway)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"response_format": schema_format({"type": "strin"})}, "Unrecognized schema"),
        ({"response_format": {"type": "json_schema"}}, "json_schema is required"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"grammar": "root ::= nothing"}, "Undefined rule identifier 'nothing'"),
        ({"grammar": 'root ::= "a"', "response_format": {"type": "json_object"}}, "not both"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs needs logprobs"),
    ]
    for body, problem in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(model="tiny", messages=ASK, max_tokens=4, extra_body=body)  # type: ignore[arg-type]
        assert problem in raised.value.message, (body, raised.value.message)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, logprobs=21)


def _llama(path: Path) -> Llama:
    # As a worker loads it: on an AMX CPU without extra buffer types, whose AMX kernel crashes
    # the process (llama_cpu.py).
    with safe_llama_defaults():
        return Llama(model_path=str(path), **IN_PROCESS)


def _in_process(path: Path, prompt: str, max_tokens: int, top: int) -> dict[str, Any]:
    llama = _llama(path)
    try:
        out: Any = llama.create_completion(prompt, max_tokens=max_tokens, temperature=0, logprobs=top)
        return dict(out["choices"][0])
    finally:
        llama.close()


def _same_tops(ours: list[dict[str, float]], theirs: list[dict[str, float]], tolerance: dict[str, float]) -> None:
    """The most likely token's logprob at each position. (Alternatives are keyed by their text, so
    two tokens that render alike collapse into one key, on each side in its own way.)"""
    for mine, expected in zip(ours, theirs, strict=True):
        assert max(mine.values()) == pytest.approx(max(expected.values()), **tolerance)


def test_completion_logprobs_equal_llama_cpp_python_s_streamed_and_not(
    gateway: Gateway, model_files: dict[str, Path]
) -> None:
    expected = _in_process(model_files["tiny"], PROMPT, 24, 3)
    client = sdk(gateway)
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0, logprobs=3)
    choice = whole.choices[0]
    assert choice.text == expected["text"]
    assert choice.logprobs is not None
    theirs = expected["logprobs"]
    assert len(choice.logprobs.tokens or []) == len(theirs["tokens"]) == 24
    assert "".join(choice.logprobs.tokens or []) == choice.text
    assert choice.logprobs.token_logprobs == pytest.approx(theirs["token_logprobs"], **TOLERANCE)
    _same_tops(choice.logprobs.top_logprobs or [], theirs["top_logprobs"], TOLERANCE)
    assert choice.logprobs.text_offset == [sum(map(len, (choice.logprobs.tokens or [])[:i])) for i in range(24)]

    streamed_tokens: list[str] = []
    streamed_logprobs: list[float] = []
    for chunk in client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=24, temperature=0, logprobs=3, stream=True
    ):
        logprobs = chunk.choices[0].logprobs
        if logprobs is not None:
            streamed_tokens += logprobs.tokens or []
            streamed_logprobs += [p for p in logprobs.token_logprobs or [] if p is not None]
    assert streamed_tokens == choice.logprobs.tokens
    assert streamed_logprobs == pytest.approx(choice.logprobs.token_logprobs, abs=1e-6)


def test_chat_logprobs_equal_llama_cpp_python_s_through_the_async_sdk_streamed_and_not(
    gateway: Gateway, model_files: dict[str, Path]
) -> None:
    llama = _llama(model_files["tiny"])
    try:
        expected: Any = llama.create_chat_completion(
            ASK,  # type: ignore[arg-type]
            max_tokens=12,
            temperature=0,
            logprobs=True,
            top_logprobs=2,
        )
    finally:
        llama.close()
    theirs = expected["choices"][0]["logprobs"]["content"]

    async def both() -> tuple[Any, list[Any]]:
        client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120)
        try:
            params: dict[str, Any] = {"max_tokens": 12, "temperature": 0, "logprobs": True, "top_logprobs": 2}
            whole = await client.chat.completions.create(model="tiny", messages=ASK, **params)  # type: ignore[arg-type]
            streamed = []
            stream = await client.chat.completions.create(model="tiny", messages=ASK, stream=True, **params)  # type: ignore[arg-type]
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].logprobs is not None:
                    streamed += chunk.choices[0].logprobs.content or []
            return whole, streamed
        finally:
            await client.close()

    whole, streamed = asyncio.run(both())
    content = whole.choices[0].logprobs.content
    assert whole.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert len(content) == len(theirs) > 0
    assert [t.logprob for t in content] == pytest.approx([t["logprob"] for t in theirs], **TOLERANCE)
    for mine, other in zip(content, theirs, strict=True):
        assert len(mine.top_logprobs) == 2
        best = max(t["logprob"] for t in other["top_logprobs"])
        assert mine.top_logprobs[0].logprob == pytest.approx(best, **TOLERANCE)
        # Greedy: the chosen token is the most likely one.
        assert mine.logprob == mine.top_logprobs[0].logprob >= mine.top_logprobs[1].logprob
        assert bytes(mine.bytes or []).decode(errors="ignore") == mine.token
    assert [t.token for t in streamed] == [t.token for t in content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=1e-6)


@pytest.fixture
def mlx_gateway(
    redis_url: str, models_dir: Path, tiny_mlx: Path, tmp_path: Path, gateways: Gateways
) -> Iterator[Gateway]:
    (models_dir / "tiny-mlx").symlink_to(tiny_mlx, target_is_directory=True)
    with running_stack(redis_url, models_dir, tmp_path / "up.log"):
        yield gateways.start(redis_url)


def test_mlx_refuses_structured_output_and_logprobs_by_name(mlx_gateway: Gateway) -> None:
    client = sdk(mlx_gateway)
    with pytest.raises(openai.BadRequestError, match="MLX engine does not support structured output"):
        client.chat.completions.create(
            model="tiny-mlx",
            messages=ASK,  # type: ignore[arg-type]
            max_tokens=8,
            response_format=schema_format(SCHEMAS[0]),
        )
    with pytest.raises(openai.BadRequestError, match="MLX engine does not return logprobs"):
        client.completions.create(model="tiny-mlx", prompt=PROMPT, max_tokens=8, logprobs=1)
    # The worker goes on serving.
    assert client.completions.create(model="tiny-mlx", prompt=PROMPT, max_tokens=4).choices[0].text


class Capital(pydantic.BaseModel):
    city: str
    country: str


@pytest.fixture
def smol_gateway(smol_stack: Stack, gateways: Gateways) -> Gateway:
    return gateways.start(smol_stack.url)


def test_smollm2_answers_in_the_schema_and_its_logprobs_are_llama_cpp_python_s(
    smol_gateway: Gateway, smollm2: Path
) -> None:
    client = sdk(smol_gateway)
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}, "country": {"type": "string", "maxLength": 40}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    messages = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]
    reply = client.chat.completions.create(
        model="smollm2-135m",
        messages=messages,  # type: ignore[arg-type]
        response_format=schema_format(schema, "capital"),
        temperature=0,
        max_tokens=120,
    )
    assert reply.choices[0].finish_reason == "stop"
    check(reply.choices[0].message.content or "", schema)
    # The SDK's own structured outputs: a pydantic model in, an instance of it out.
    parsed = client.chat.completions.parse(
        model="smollm2-135m",
        messages=messages,  # type: ignore[arg-type]
        response_format=Capital,
        temperature=0,
        max_tokens=120,
    )
    capital = parsed.choices[0].message.parsed
    assert isinstance(capital, Capital) and capital.city
    free = client.chat.completions.create(
        model="smollm2-135m",
        messages=messages,  # type: ignore[arg-type]
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=120,
    )
    assert free.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(free.choices[0].message.content or ""), dict)

    prompt = "The capital of France is"
    expected = _in_process(smollm2, prompt, 16, 2)
    ours = client.completions.create(model="smollm2-135m", prompt=prompt, max_tokens=16, temperature=0, logprobs=2)
    logprobs = ours.choices[0].logprobs
    assert ours.choices[0].text == expected["text"] and logprobs is not None
    assert logprobs.token_logprobs == pytest.approx(expected["logprobs"]["token_logprobs"], **TOLERANCE)
    _same_tops(logprobs.top_logprobs or [], expected["logprobs"]["top_logprobs"], TOLERANCE)
