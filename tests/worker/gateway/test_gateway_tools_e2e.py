"""Tool calling through `hostler gateway` with the official openai SDK, and through the Python
clients: SmolLM2-135M-Instruct given a Hermes-style tools template by model.yaml, and the tiny
GGUF, whose template cannot show tools."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import redis
from conftest import Stack, running_stack
from gateway_proc import Gateway, Gateways
from hostler import AsyncClient
from tool_templates import tool_model

pytestmark = pytest.mark.e2e

MODEL = "smollm2-tools"
NO_TOOLS = "tiny"
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city's name."},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The current weather in a city.", "parameters": WEATHER_SCHEMA},
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The current time."}}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
# A forced call of get_weather takes about 47 tokens; an answer is cut at 24.
GREEDY = {"temperature": 0, "max_tokens": 96}
ANSWER = {"temperature": 0, "max_tokens": 24}


@pytest.fixture
def tools_stack(redis_url: str, tmp_path: Path, smollm2: Path, model_files: dict[str, Path]) -> Iterator[Stack]:
    models = tmp_path / "models"
    models.mkdir()
    tool_model(models, MODEL, smollm2, bos=False)
    (models / f"{NO_TOOLS}.gguf").symlink_to(model_files["tiny"])
    with running_stack(redis_url, models, tmp_path / "up.log") as running:
        yield running


@pytest.fixture
def gateway(tools_stack: Stack, gateways: Gateways) -> Gateway:
    return gateways.start(tools_stack.url)


def the_call(message: Any) -> tuple[str, dict[str, Any]]:
    """The one call a message made, its arguments checked against the function's schema."""
    assert message.tool_calls is not None and len(message.tool_calls) == 1, message
    call = message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_SCHEMA)
    return call.function.name, arguments


def reassembled(chunks: list[Any]) -> tuple[dict[int, dict[str, str]], list[str | None]]:
    """The calls a stream's deltas add up to, by index, and its finish reasons."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    return calls, [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]


def test_a_tool_round_trip_through_the_sdk_call_result_answer(tools_stack: Stack, gateway: Gateway) -> None:
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    first = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice=NAMED,  # type: ignore[arg-type]
        **GREEDY,  # type: ignore[arg-type]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    name, arguments = the_call(choice.message)
    assert name == "get_weather"

    # The SDK's own message object goes back as the assistant turn, then the tool's answer.
    call = choice.message.tool_calls[0]  # type: ignore[index]
    result = json.dumps({"city": arguments["city"], "temperature": 18, "unit": arguments["unit"]})
    conversation = [*ASK, choice.message, {"role": "tool", "tool_call_id": call.id, "content": result}]
    final = sdk.chat.completions.create(
        model=MODEL,
        messages=conversation,  # type: ignore[arg-type]
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice="none",
        **ANSWER,  # type: ignore[arg-type]
    )
    answer = final.choices[0]
    assert answer.message.tool_calls is None and answer.finish_reason in ("stop", "length")
    assert answer.message.content
    # The gateway handed the tool turns on as they came: the Python client's job gives the same answer.
    same = tools_stack.client.chat(
        MODEL,
        [
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": result},
        ],
        tools=[WEATHER, TIME],
        tool_choice="none",
        **ANSWER,  # type: ignore[arg-type]
    )
    assert same.text == answer.message.content and same.tool_calls == []
    assert final.usage is not None and final.usage.prompt_tokens == same.usage.prompt_tokens

    # required: some call, of either function, each valid against its own parameters.
    required = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        **GREEDY,  # type: ignore[arg-type]
    )
    made = required.choices[0].message.tool_calls
    assert required.choices[0].finish_reason == "tool_calls" and made is not None and len(made) == 1
    if made[0].function.name == "get_weather":
        the_call(required.choices[0].message)
    else:
        assert made[0].function.name == "get_time" and json.loads(made[0].function.arguments) == {}


def test_streamed_tool_call_deltas_add_up_to_the_call_in_both_sdks_and_clients(
    tools_stack: Stack, gateway: Gateway
) -> None:
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    request: dict[str, Any] = {"model": MODEL, "messages": ASK, "tools": [WEATHER], "tool_choice": NAMED, **GREEDY}
    whole = sdk.chat.completions.create(**request)
    expected = the_call(whole.choices[0].message)

    chunks = list(sdk.chat.completions.create(**request, stream=True))
    calls, reasons = reassembled(chunks)
    assert list(calls) == [0] and calls[0]["id"].startswith("call_") and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == expected[1]
    assert reasons[-1] == "tool_calls" and all(r is None for r in reasons[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""

    # The async SDK and both Python clients, all at once (the worker's slots decode them together).
    messages, options = ASK, {"tools": [WEATHER], "tool_choice": NAMED, **GREEDY}

    async def everything_else() -> list[Any]:
        async_sdk = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
        try:
            async with AsyncClient(tools_stack.url, timeout=280) as client:

                async def sdk_stream() -> list[Any]:
                    return [chunk async for chunk in await async_sdk.chat.completions.create(**request, stream=True)]

                async def client_stream() -> tuple[list[str], Any]:
                    streamed = await client.chat(MODEL, messages, stream=True, **options)  # type: ignore[arg-type]
                    return [piece async for piece in streamed], streamed.result

                def sync_client_stream() -> tuple[list[str], Any]:
                    streamed = tools_stack.client.chat(MODEL, messages, stream=True, **options)  # type: ignore[arg-type]
                    return list(streamed), streamed.result

                return list(
                    await asyncio.gather(
                        sdk_stream(),
                        async_sdk.chat.completions.create(**request),
                        client.chat(MODEL, messages, **options),  # type: ignore[arg-type]
                        client_stream(),
                        asyncio.to_thread(tools_stack.client.chat, MODEL, messages, **options),
                        asyncio.to_thread(sync_client_stream),
                    )
                )
        finally:
            await async_sdk.close()

    sdk_chunks, sdk_whole, async_result, async_streamed, sync_result, sync_streamed = asyncio.run(everything_else())
    # Decoded beside each other their greedy choices may differ from a solo run's where two tokens
    # are within rounding (see the determinism contract): each is checked against the schema.
    async_calls, async_reasons = reassembled(sdk_chunks)
    assert list(async_calls) == [0] and async_calls[0]["name"] == "get_weather" and async_reasons[-1] == "tool_calls"
    jsonschema.validate(json.loads(async_calls[0]["arguments"]), WEATHER_SCHEMA)
    assert the_call(sdk_whole.choices[0].message)[0] == "get_weather"
    # The Python clients: the calls are the result's; a stream yields only the reply's text (none here).
    for result in (async_result, sync_result, async_streamed[1], sync_streamed[1]):
        assert result is not None and result.finish_reason == "tool_calls" and result.text == ""
        assert [call.function.name for call in result.tool_calls] == ["get_weather"]
        jsonschema.validate(json.loads(result.tool_calls[0].function.arguments), WEATHER_SCHEMA)
    assert async_streamed[0] == [] and sync_streamed[0] == []


def test_a_model_that_cannot_show_tools_and_bad_tools_are_400s_naming_what_is_wrong(
    tools_stack: Stack, gateway: Gateway, connection: redis.Redis
) -> None:
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=NO_TOOLS, messages=ASK, tools=[WEATHER], max_tokens=4)  # type: ignore[arg-type,list-item]
    body: Any = refused.value.body
    assert body["code"] == "tools_unsupported"
    assert (
        f"'{NO_TOOLS}'" in body["message"] and "chat_template:" in body["message"] and "model.yaml" in body["message"]
    )
    # tool_choice none hides the tools: the model answers as without them.
    plain = sdk.chat.completions.create(model=NO_TOOLS, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=4)  # type: ignore[arg-type,list-item]
    assert plain.choices[0].message.content and plain.choices[0].message.tool_calls is None

    url = f"{gateway.base_url}/chat/completions"
    base = {"model": MODEL, "messages": ASK, "max_tokens": 4}
    bad: list[tuple[dict[str, Any], str]] = [
        ({"tools": [{"type": "function"}]}, "tools.0.function"),
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools.0.type"),
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools.0.function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
            "tools.0.function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
            "tools.0.function.parameters",
        ),
        ({"tools": [TIME, TIME]}, "tools"),
        ({"tools": [TIME], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TIME], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [TIME], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"messages": [{"role": "user", "content": "x", "tool_call_id": "call_1"}]}, "messages.0"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]},
            "messages.0.tool_calls.0.function",
        ),
    ]
    before = set(connection.scan_iter("rq:job:*"))
    for extra, param in bad:
        response = httpx.post(url, json={**base, **extra})
        assert response.status_code == 400, (extra, response.text)
        error = response.json()["error"]
        assert error["param"] == param, (extra, error)
        assert error["message"], error
    assert set(connection.scan_iter("rq:job:*")) == before, "a refused request reached a queue"

    # A parameters schema llama.cpp's converter cannot read is the worker's to find: still a 400 naming it.
    broken = {"type": "function", "function": {"name": "lookup", "parameters": {"$ref": "#/$defs/nowhere"}}}
    response = httpx.post(url, json={**base, "tools": [broken], "tool_choice": "required"}, timeout=120)
    assert response.status_code == 400, response.text
    assert "'lookup'" in response.json()["error"]["message"]
