"""Chats with tools on real llama.cpp (the tiny generated GGUF, given a Hermes tools template): a
forced call is sampled under its grammar, so even random weights answer with a call whose
arguments validate; its reply comes back as calls, not text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hostler.schemas import ChatMessage, LoadParams, NamedToolChoice, SamplingParams, Tool, ToolChoice
from hostler.worker.engines.llama_slots import LlamaSlots
from hostler.worker.engines.protocol import GenerationRequest, StepOutput, ToolsUnsupported
from hostler.worker.engines.tool_grammar import BadToolSchema
from tool_templates import hermes_template

# Bounded values only: on random weights a free string could run to max_tokens.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "count": {"type": "integer"},
        "unit": {"enum": ["meters", "feet"]},
        "exact": {"type": "boolean"},
    },
    "required": ["count", "unit", "exact"],
    "additionalProperties": False,
}
MEASURE = Tool.model_validate({"type": "function", "function": {"name": "measure", "parameters": SCHEMA}})
PING = Tool.model_validate({"type": "function", "function": {"name": "ping"}})
ASK = [ChatMessage(role="user", content="How far is it?")]


@pytest.fixture(scope="module")
def slots(model_files: dict[str, Path]) -> Iterator[LlamaSlots]:
    engine = LlamaSlots(
        model_files["tiny"], LoadParams(n_ctx=2048, n_parallel=4), chat_template=hermes_template(bos=True)
    )
    yield engine
    engine.close()


def run(engine: LlamaSlots, requests: list[GenerationRequest]) -> list[tuple[str, list[StepOutput]]]:
    """Runs the requests together; each one's text (its pieces joined) and outputs."""
    handles = [engine.start(request) for request in requests]
    outputs: dict[int, list[StepOutput]] = {handle: [] for handle in handles}
    while any(not seen or seen[-1].finish_reason is None for seen in outputs.values()):
        for output in engine.step():
            outputs[output.seq].append(output)
    return [("".join(o.piece for o in outputs[h]), outputs[h]) for h in handles]


def chat(choice: ToolChoice, tools: list[Tool], **sampling: Any) -> GenerationRequest:
    params = SamplingParams(**{"max_tokens": 160, **sampling})
    return GenerationRequest(params=params, messages=ASK, tools=tools, tool_choice=choice, parallel_tool_calls=False)


def test_a_forced_call_validates_greedy_or_sampled(slots: LlamaSlots) -> None:
    named = NamedToolChoice.model_validate({"function": {"name": "measure"}})
    requests = [chat(named, [PING, MEASURE], temperature=0)]
    requests += [chat(named, [PING, MEASURE], temperature=1.0, seed=seed) for seed in (1, 2, 3)]
    for text, outputs in run(slots, requests):
        last = outputs[-1]
        assert last.finish_reason == "tool_calls" and text == "", (text, last)
        assert len(last.tool_calls) == 1 and last.tool_calls[0].function.name == "measure"
        jsonschema.validate(json.loads(last.tool_calls[0].function.arguments), SCHEMA)

    # required: one of the offered functions, whichever the model picks.
    for text, outputs in run(slots, [chat("required", [PING, MEASURE], temperature=1.0, seed=s) for s in (4, 5)]):
        (call,) = outputs[-1].tool_calls
        arguments = json.loads(call.function.arguments)
        assert call.function.name in ("ping", "measure") and text == ""
        if call.function.name == "measure":
            jsonschema.validate(arguments, SCHEMA)
        else:
            assert arguments == {}


def test_auto_and_none_leave_the_reply_to_the_model(slots: LlamaSlots) -> None:
    (auto_text, auto), (none_text, none), (plain_text, plain) = run(
        slots,
        [
            chat("auto", [MEASURE], temperature=0, max_tokens=12),
            chat("none", [MEASURE], temperature=0, max_tokens=12),
            GenerationRequest(params=SamplingParams(max_tokens=12, temperature=0), messages=ASK),
        ],
    )
    # Random weights never write a call: the reply is text, streamed as it came.
    assert auto[-1].tool_calls == () and auto[-1].finish_reason == "length" and auto_text
    # none hides the tools: the prompt and the reply are those of a chat without tools.
    assert (none_text, none[-1].prompt_tokens) == (plain_text, plain[-1].prompt_tokens)
    assert auto[-1].prompt_tokens > plain[-1].prompt_tokens


def test_a_template_without_tools_and_a_schema_without_a_grammar_are_refused(
    slots: LlamaSlots, model_files: dict[str, Path]
) -> None:
    with pytest.raises(BadToolSchema, match="'broken'"):
        broken = Tool.model_validate({"function": {"name": "broken", "parameters": {"$ref": "#/$defs/gone"}}})
        slots.start(chat("required", [broken]))
    conflicting = GenerationRequest(
        params=SamplingParams(json_schema={"type": "object"}), messages=ASK, tools=[PING], tool_choice="required"
    )
    with pytest.raises(BadToolSchema, match="json_schema"):
        slots.start(conflicting)
    assert slots.free_slots == slots.n_slots

    plain = LlamaSlots(model_files["tiny"], LoadParams(n_ctx=256, n_parallel=1))
    try:
        with pytest.raises(ToolsUnsupported, match="'tiny'.*chat_template:"):
            plain.start(chat("auto", [PING]))
        # Without tools (or with tool_choice none) the same model chats as ever.
        assert run(plain, [chat("none", [PING], temperature=0, max_tokens=4)])[0][1][-1].finish_reason == "length"
    finally:
        plain.close()
