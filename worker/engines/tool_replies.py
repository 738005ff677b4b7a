"""A slot engine's chats with tools: what they are sampled under, and their replies split into
content and tool calls as the steps come.

An engine asks `prepare` before it starts a chat: it refuses tools to a template that never
reads them, and for a forced call (tool_choice `required` or a named function) puts the call's
grammar into the sampling params. `outputs` then passes every step's outputs through, holding
back a sequence's text from where a call may begin and handing the parsed calls over with its
last output (finish reason `tool_calls`). The pieces it lets out, joined, are the reply's
content, so a job's token events still add up to its result's text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from hostler.schemas import SamplingParams

from .chat_render import template_reads_tools
from .protocol import GenerationRequest, StepOutput, ToolsUnsupported
from .tool_calls import ToolCallScanner, tool_format
from .tool_grammar import BadToolSchema, forced_tools, tool_call_grammar


def wants_tools(request: GenerationRequest) -> bool:
    """Whether the chat's tools are shown to the model (tool_choice none hides them)."""
    return bool(request.tools) and request.tool_choice != "none"


class ToolReplies:
    def __init__(self, model: str) -> None:
        self._model = model
        self._scanners: dict[int, ToolCallScanner] = {}

    def prepare(
        self, request: GenerationRequest, template: str | None, *, grammars: bool = True
    ) -> tuple[SamplingParams, ToolCallScanner | None]:
        """The params to sample the chat with, and the scanner of its reply (None without tools).
        grammars: whether the engine samples under a grammar (what a forced call needs)."""
        if not wants_tools(request) or request.tools is None or template is None:
            return request.params, None
        if not template_reads_tools(template):
            raise ToolsUnsupported(
                f"model {self._model!r} cannot call tools: its chat template never reads `tools`. Give it a "
                "template that renders them with `chat_template:` in a model.yaml beside the model "
                "(for example one that writes <tool_call>{...}</tool_call> blocks), or leave tools unset"
            )
        fmt = tool_format(template)
        params = request.params
        forced = forced_tools(request.tools, request.tool_choice)
        if forced is not None and not grammars:
            raise ToolsUnsupported(
                f"model {self._model!r} cannot be made to call a tool (tool_choice required or a named "
                "function): its engine has no grammar sampler to constrain the reply (GGUF models do); "
                "use tool_choice auto"
            )
        if forced is not None:
            if params.grammar is not None or params.json_schema is not None:
                raise BadToolSchema(
                    "tool_choice required (or a named function) constrains the reply to a call with its own "
                    "grammar; leave grammar, json_schema and response_format unset with it"
                )
            several = request.parallel_tool_calls and request.tool_choice == "required"
            params = params.model_copy(update={"grammar": tool_call_grammar(forced, fmt, parallel=several)})
        return params, ToolCallScanner(fmt, request.tools, parallel=request.parallel_tool_calls)

    def track(self, handle: int, scanner: ToolCallScanner | None) -> None:
        if scanner is not None:
            self._scanners[handle] = scanner

    def forget(self, handle: int) -> None:
        self._scanners.pop(handle, None)

    def outputs(self, outputs: Sequence[StepOutput]) -> list[StepOutput]:
        return [self._output(output) for output in outputs]

    def _output(self, output: StepOutput) -> StepOutput:
        scanner = self._scanners.get(output.seq)
        if scanner is None:
            return output
        piece = scanner.feed(output.piece)
        if output.finish_reason is None:
            return dataclasses.replace(output, piece=piece)
        del self._scanners[output.seq]
        rest, calls = scanner.finish()
        # A reply cut by max_tokens says so even when a whole call came before the cut.
        reason = "tool_calls" if calls and output.finish_reason == "stop" else output.finish_reason
        return dataclasses.replace(output, piece=piece + rest, finish_reason=reason, tool_calls=calls)


def refuse_tools(request: GenerationRequest, engine: str) -> None:
    """For engines that cannot render tools yet: a clear error instead of silently ignoring them."""
    if wants_tools(request):
        raise ToolsUnsupported(
            f"tools are not supported by the {engine} engine yet; use a GGUF model or leave tools unset"
        )
