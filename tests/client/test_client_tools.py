"""The Python clients' tools keywords: checked into the chat job before anything is queued."""

from __future__ import annotations

import asyncio

import pytest
import redis
from hostler import AsyncClient, Client, InvalidRequest
from hostler.schemas import JOB_ADAPTER, ChatJob, NamedToolChoice

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "Weather in Oslo?"}]


def test_tools_ride_on_the_chat_job_and_survive_the_wire(redis_url: str) -> None:
    with Client(redis_url) as client:
        call = client._chat(
            "m", ASK, {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            stream=False,
        )  # fmt: skip
    job = call.job
    assert isinstance(job, ChatJob) and job.tools is not None and job.tools[0].function.name == "get_weather"
    assert isinstance(job.tool_choice, NamedToolChoice) and job.parallel_tool_calls
    assert JOB_ADAPTER.validate_json(JOB_ADAPTER.dump_json(job)) == job
    # An assistant turn that only called a tool, and the tool's answer, as OpenAI spells them.
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3 degrees"},
    ]  # fmt: skip
    with Client(redis_url) as client:
        job = client._chat("m", history, {"tools": [WEATHER]}, stream=False).job
    assert isinstance(job, ChatJob) and job.effective_tool_choice() == "auto"
    assert job.messages[1].content is None and job.messages[2].tool_call_id == "call_1"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
        ({"tools": [{"type": "function"}]}, "tools.0.function"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
    ],
)
def test_bad_tools_are_refused_by_name_before_anything_is_queued(
    redis_url: str, connection: redis.Redis, kwargs: dict[str, object], named: str
) -> None:
    with Client(redis_url) as client, pytest.raises(InvalidRequest, match=named.replace(".", r"\.")):
        client.chat("m", ASK, **kwargs)  # type: ignore[arg-type]

    async def through_async() -> None:
        async with AsyncClient(redis_url) as client:
            await client.chat("m", ASK, **kwargs)  # type: ignore[arg-type]

    with pytest.raises(InvalidRequest, match=named.replace(".", r"\.")):
        asyncio.run(through_async())
    assert connection.dbsize() == 0


def test_tools_go_with_a_chat_not_a_prompt(redis_url: str) -> None:
    with Client(redis_url) as client, pytest.raises(InvalidRequest, match="messages="):
        client.submit("m", "a prompt", tools=[WEATHER])  # type: ignore[list-item]
    with Client(redis_url) as client, pytest.raises(InvalidRequest, match="content is required"):
        client.chat("m", [{"role": "assistant", "content": None}])
