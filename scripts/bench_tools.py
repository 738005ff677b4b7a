#!/usr/bin/env python3
"""Tool calls on SmolLM2-135M-Instruct, in-process (the engine the worker drives, no Redis): how
many replies are calls whose arguments validate, forced (tool_choice naming the function: a
grammar) and unforced (auto: what the model writes by itself), and what a forced call costs.

    .venv/bin/python scripts/bench_tools.py [--n 16]

The model gets scripts/tool_templates.py's Hermes template, as model.yaml would give it.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jsonschema
from hostler.schemas import ChatMessage, LoadParams, NamedToolChoice, SamplingParams, Tool, ToolChoice
from hostler.worker.engines.llama_slots import LlamaSlots
from hostler.worker.engines.protocol import GenerationRequest, StepOutput
from hostler.worker.models.fetch import SMOLLM2, fetch
from tool_templates import hermes_template

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = Tool.model_validate(
    {"function": {"name": "get_weather", "description": "The current weather in a city.", "parameters": SCHEMA}}
)
CITIES = "Paris Oslo Lima Cairo Tokyo Quito Perth Dakar Hanoi Bern Rome Kyiv Accra Minsk Riga Doha".split()


def run(engine: LlamaSlots, requests: list[GenerationRequest]) -> tuple[list[StepOutput], float]:
    """Runs the requests as the worker would (every slot full); each one's last output, and the seconds."""
    started = time.perf_counter()
    pending, last = list(enumerate(requests)), {}
    handles: dict[int, int] = {}
    while pending or len(last) < len(requests):
        while pending and engine.free_slots:
            index, request = pending.pop(0)
            handles[engine.start(request)] = index
        for output in engine.step():
            if output.finish_reason is not None:
                last[handles[output.seq]] = output
    return [last[i] for i in range(len(requests))], time.perf_counter() - started


def valid(output: StepOutput) -> bool:
    if len(output.tool_calls) != 1 or output.tool_calls[0].function.name != "get_weather":
        return False
    try:
        jsonschema.validate(json.loads(output.tool_calls[0].function.arguments), SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def requests(n: int, choice: ToolChoice, temperature: float) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            params=SamplingParams(max_tokens=64, temperature=temperature, seed=i),
            messages=[ChatMessage(role="user", content=f"What is the weather like in {CITIES[i % len(CITIES)]}?")],
            tools=[WEATHER],
            tool_choice=choice,
        )
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="questions per mode")
    args = parser.parse_args()
    engine = LlamaSlots(
        fetch(SMOLLM2, quiet=True), LoadParams(n_ctx=1024, n_parallel=8), chat_template=hermes_template(bos=False)
    )
    named = NamedToolChoice.model_validate({"function": {"name": "get_weather"}})
    try:
        for label, choice, temperature in (
            ("forced, greedy", named, 0.0),
            ("forced, temperature 0.8", named, 0.8),
            ("auto, greedy", "auto", 0.0),
            ("auto, temperature 0.8", "auto", 0.8),
        ):
            outputs, seconds = run(engine, requests(args.n, choice, temperature))
            calls = sum(1 for o in outputs if o.tool_calls)
            good = sum(1 for o in outputs if valid(o))
            tokens = sum(o.completion_tokens for o in outputs)
            print(
                f"{label:<24} calls {calls:>3}/{len(outputs)}  valid {good:>3}/{len(outputs)}  "
                f"{tokens / len(outputs):5.1f} tokens/reply  {seconds / len(outputs) * 1000:6.0f} ms/reply  "
                f"{tokens / seconds:6.1f} tokens/s"
            )
    finally:
        engine.close()


if __name__ == "__main__":
    main()
