"""Tool calls in a model's reply: the format its chat template teaches, the calls parsed out of
the text, and the text held back from a stream while a call may be starting. Pure policy.

Two formats, told apart by the template:
- `hermes`: a template that writes `<tool_call>` (Hermes, Qwen 2.5/3, and the like) teaches
  the model to answer with one `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
  block per call, text around them being content;
- `json`: any other template that reads `tools` (Llama 3.x, Mistral, generic ones): the whole
  reply is one JSON object `{"name": ..., "arguments"|"parameters": {...}}` or a list of them,
  optionally after a `[TOOL_CALLS]` or `<|python_tag|>` marker.
A block that does not parse, or names a function that was not offered, stays content:
a reply is never turned into a call the caller did not offer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hostler.schemas import FunctionCall, Tool, ToolCall, new_tool_call_id

ToolFormat = Literal["hermes", "json"]

HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"
# Markers some templates put before a JSON call.
_JSON_MARKERS = ("[TOOL_CALLS]", "<|python_tag|>")
_HERMES_BLOCK = re.compile(re.escape(HERMES_OPEN) + r"(.*?)(?:" + re.escape(HERMES_CLOSE) + r"|\Z)", re.DOTALL)


def tool_format(template: str) -> ToolFormat:
    return "hermes" if HERMES_OPEN in template else "json"


@dataclass(frozen=True)
class ParsedReply:
    content: str
    calls: tuple[ToolCall, ...]


def parse_reply(text: str, fmt: ToolFormat, names: Sequence[str], *, parallel: bool = True) -> ParsedReply:
    """The calls in a whole reply, and the rest of it as content.

    With parallel=False only the first call is kept (OpenAI's parallel_tool_calls=false).
    """
    content, calls = _parse_hermes(text, names) if fmt == "hermes" else _parse_json(text, names)
    if not parallel:
        calls = calls[:1]
    return ParsedReply(content, tuple(calls))


def _parse_hermes(text: str, names: Sequence[str]) -> tuple[str, list[ToolCall]]:
    calls: list[ToolCall] = []
    kept: list[str] = []
    at = 0
    for block in _HERMES_BLOCK.finditer(text):
        call = _call_from(_loads(block.group(1).strip()), names)
        if call is None:
            continue  # stays in the content
        calls.append(call)
        kept.append(text[at : block.start()])
        at = block.end()
    kept.append(text[at:])
    content = "".join(kept)
    return (content.strip() if calls else content), calls


def _parse_json(text: str, names: Sequence[str]) -> tuple[str, list[ToolCall]]:
    body = text.strip()
    for marker in _JSON_MARKERS:
        body = body.removeprefix(marker).lstrip()
    if body.startswith("```"):
        body = body.removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    value = _loads(body)
    items = value if isinstance(value, list) else [value]
    calls = [_call_from(item, names) for item in items]
    if not items or any(call is None for call in calls):
        return text, []
    return "", [call for call in calls if call is not None]


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _call_from(value: Any, names: Sequence[str]) -> ToolCall | None:
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # OpenAI's own shape, which some models echo
        value = value["function"]
    name = value.get("name")
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = _loads(arguments)
    if not isinstance(name, str) or name not in names or not isinstance(arguments, dict):
        return None
    return ToolCall(
        id=new_tool_call_id(),
        function=FunctionCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False)),
    )


@dataclass
class ToolCallScanner:
    """Splits a streamed reply: text that is surely content goes out at once; from where a call
    may begin, text is held back until the reply ends and is parsed then.

    The pieces fed out, joined with the content `finish` returns, equal the reply's content.
    """

    fmt: ToolFormat
    tools: Sequence[Tool]
    parallel: bool = True
    _text: str = field(default="", init=False)
    _sent: int = field(default=0, init=False)
    _holding: bool = field(default=False, init=False)

    def feed(self, piece: str) -> str:
        """Adds generated text; returns the content that may be sent now (may be empty)."""
        self._text += piece
        if self._holding:
            return ""
        if self.fmt == "json":
            # A JSON call is the whole reply: hold it all while it may be one.
            start = self._text.lstrip()
            if not start:
                return ""
            if start[0] in "{[`" or any(m.startswith(start[: len(m)]) for m in _JSON_MARKERS):
                self._holding = True
                return ""
            return self._release(len(self._text))
        at = self._text.find(HERMES_OPEN, self._sent)
        if at != -1:
            self._holding = True
            return self._release(at)
        return self._release(len(self._text) - _partial_suffix(self._text, HERMES_OPEN))

    def finish(self) -> tuple[str, tuple[ToolCall, ...]]:
        """At the end of the reply: the content not sent yet, and the calls."""
        rest = self._text[self._sent :]
        self._sent = len(self._text)
        if not rest:
            return "", ()
        names = [tool.function.name for tool in self.tools]
        parsed = parse_reply(rest, self.fmt, names, parallel=self.parallel)
        return parsed.content, parsed.calls

    def _release(self, upto: int) -> str:
        out = self._text[self._sent : upto]
        self._sent = max(self._sent, upto)
        return out


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of text that is a proper start of marker."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0
