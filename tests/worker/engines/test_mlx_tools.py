"""Chats with tools on MlxSlots (the tiny generated MLX folder, given a Hermes tools template): the
tools reach the prompt through the tokenizer's template, a forced call is refused by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hostler.schemas import ChatMessage, LoadParams, SamplingParams, Tool, ToolChoice
from hostler.worker.engines.protocol import GenerationRequest, StepOutput, ToolsUnsupported
from tool_templates import hermes_template

pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")

from hostler.worker.engines.mlx_batch import MlxSlots  # noqa: E402

PING = Tool.model_validate({"type": "function", "function": {"name": "ping", "description": "Answers pong."}})
ASK = [ChatMessage(role="user", content="Is it there?")]


@pytest.fixture(scope="module")
def slots(tiny_mlx: Path) -> Iterator[MlxSlots]:
    engine = MlxSlots(tiny_mlx, LoadParams(n_parallel=2), chat_template=hermes_template(bos=False))
    yield engine
    engine.close()


def chat(choice: ToolChoice, tools: list[Tool] | None = None) -> GenerationRequest:
    params = SamplingParams(max_tokens=8, temperature=0)
    return GenerationRequest(params=params, messages=ASK, tools=tools, tool_choice=choice)


def finish(engine: MlxSlots, request: GenerationRequest) -> tuple[str, StepOutput]:
    handle = engine.start(request)
    outputs: list[StepOutput] = []
    while not outputs or outputs[-1].finish_reason is None:
        outputs += [output for output in engine.step() if output.seq == handle]
    return "".join(output.piece for output in outputs), outputs[-1]


def test_auto_shows_the_tools_and_none_hides_them(slots: MlxSlots) -> None:
    auto_text, auto = finish(slots, chat("auto", [PING]))
    none_text, none = finish(slots, chat("none", [PING]))
    plain_text, plain = finish(slots, chat("none"))
    assert auto.prompt_tokens > plain.prompt_tokens and (none_text, none.prompt_tokens) == (
        plain_text,
        plain.prompt_tokens,
    )
    # Random weights write no call: the reply is text, its pieces the whole of it.
    assert auto.tool_calls == () and auto.finish_reason == "length" and auto_text


def test_a_forced_call_is_refused_by_name(slots: MlxSlots) -> None:
    with pytest.raises(ToolsUnsupported, match="grammar"):
        slots.start(chat("required", [PING]))
    assert slots.free_slots == slots.n_slots
