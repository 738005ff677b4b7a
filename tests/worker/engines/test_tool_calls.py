"""Tool calls without a model: parsing replies, holding back a streamed call, rendering tools and
tool turns through a real Jinja template, and the grammar of a forced call."""

from __future__ import annotations

import json

import pytest
from hostler.schemas import ChatMessage, NamedToolChoice, Tool
from hostler.worker.engines.chat_render import template_messages, template_reads_tools, template_tools
from hostler.worker.engines.tool_calls import ParsedReply, ToolCallScanner, parse_reply, tool_format
from hostler.worker.engines.tool_grammar import BadToolSchema, forced_tools, tool_call_grammar
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from make_tiny_gguf import DEFAULT_TEMPLATE
from tool_templates import hermes_template

WEATHER = Tool.model_validate(
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"],
            },
        },
    }
)
NOW = Tool.model_validate({"type": "function", "function": {"name": "now"}})
NAMES = ["get_weather", "now"]


def test_the_format_follows_the_template() -> None:
    assert tool_format(hermes_template(bos=False)) == "hermes"
    assert tool_format("{% for tool in tools %}{{ tool | tojson }}{% endfor %}") == "json"


def test_a_template_supports_tools_only_if_it_reads_them() -> None:
    assert template_reads_tools(hermes_template(bos=True))
    assert not template_reads_tools(DEFAULT_TEMPLATE)
    # A template that only sets its own `tools` never reads the caller's.
    assert not template_reads_tools("{% set tools = [] %}{{ tools }}")
    assert not template_reads_tools("{% if %}")


def test_hermes_blocks_become_calls_and_the_rest_content() -> None:
    text = (
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n'
        '</tool_call>\n<tool_call>{"name": "now", "arguments": {}}</tool_call>'
    )
    parsed = parse_reply(text, "hermes", NAMES)
    assert parsed.content == "Let me look."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in parsed.calls] == [
        ("get_weather", {"city": "Oslo", "unit": "celsius"}),
        ("now", {}),
    ]
    ids = [call.id for call in parsed.calls]
    assert all(i.startswith("call_") and len(i) == 29 for i in ids) and len(set(ids)) == 2
    assert len(parse_reply(text, "hermes", NAMES, parallel=False).calls) == 1
    # A block cut short by the end of the reply still counts when its JSON is whole.
    assert parse_reply('<tool_call>{"name": "now", "arguments": {}}', "hermes", NAMES).calls


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',  # not offered
        '<tool_call>{"name": "now", "arguments": [1]}</tool_call>',  # arguments must be an object
        "no call at all",
    ],
)
def test_what_is_no_call_stays_content(text: str) -> None:
    parsed = parse_reply(text, "hermes", NAMES)
    assert parsed.calls == () and parsed.content == text


def test_plain_json_calls() -> None:
    one = parse_reply('{"name": "get_weather", "parameters": {"city": "Rome", "unit": "celsius"}}', "json", NAMES)
    assert one.content == "" and json.loads(one.calls[0].function.arguments)["city"] == "Rome"
    several = parse_reply(
        '[TOOL_CALLS] [{"name": "now", "arguments": {}}, {"name": "now", "arguments": "{}"}]', "json", NAMES
    )
    assert [c.function.arguments for c in several.calls] == ["{}", "{}"]
    assert parse_reply('<|python_tag|>{"name": "now", "arguments": {}}', "json", NAMES).calls
    prose = 'I think {"name": "now"} is a function.'
    assert parse_reply(prose, "json", NAMES) == ParsedReply(prose, ())


def stream(scanner: ToolCallScanner, pieces: list[str]) -> tuple[list[str], str, int]:
    sent = [scanner.feed(piece) for piece in pieces]
    rest, calls = scanner.finish()
    return sent, "".join(sent) + rest, len(calls)


def test_a_streamed_reply_sends_content_at_once_and_holds_back_the_call() -> None:
    call = '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
    text = "Checking the time. " + call
    # Split everywhere, so the opening tag arrives in pieces too.
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    sent, content, n_calls = stream(ToolCallScanner("hermes", [NOW]), pieces)
    # The words went out as they came (the reply's text keeps its space), and nothing of the tag did.
    assert sent[:3] == ["Che", "cki", "ng "] and content == "Checking the time. " and n_calls == 1
    assert "".join(sent) == content

    sent, content, n_calls = stream(ToolCallScanner("hermes", [NOW]), ["a <tool", "kit> b"])
    assert sent == ["a ", "<toolkit> b"] and content == "a <toolkit> b" and n_calls == 0


def test_a_streamed_json_reply_is_held_while_it_may_be_a_call() -> None:
    sent, content, n_calls = stream(ToolCallScanner("json", [NOW]), [" {", '"name": "now", ', '"arguments": {}}'])
    assert sent == ["", "", ""] and content == "" and n_calls == 1
    sent, content, n_calls = stream(ToolCallScanner("json", [NOW]), ["Hello", " there"])
    assert sent == ["Hello", " there"] and content == "Hello there" and n_calls == 0
    sent, content, n_calls = stream(ToolCallScanner("json", [NOW]), ["{curly", " prose"])
    assert sent == ["", ""] and content == "{curly prose" and n_calls == 0


def test_tools_and_tool_turns_render_through_a_real_template() -> None:
    formatter = Jinja2ChatFormatter(template=hermes_template(bos=True), eos_token="</s>", bos_token="<s>")
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Weather in Oslo?"),
        ChatMessage.model_validate(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'},
                    }
                ],
            }
        ),
        ChatMessage(role="tool", content='{"temperature": 3}', tool_call_id="call_1"),
    ]
    prompt = formatter(messages=template_messages(messages), tools=template_tools([WEATHER])).prompt
    assert prompt.startswith("<s><|im_start|>system\nBe brief.\n\n")
    assert json.dumps(template_tools([WEATHER])[0]) in prompt
    # The call's arguments render as the object they are, not as a quoted string; a null content as nothing.
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>' in prompt
    )
    assert "None" not in prompt
    assert '<tool_response>\n{"temperature": 3}\n</tool_response>' in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    # Without tools the same template is a plain ChatML one.
    plain = formatter(messages=template_messages(messages[:2])).prompt
    turns = ["system\nBe brief.", "user\nWeather in Oslo?"]
    assert plain == "<s>" + "".join(f"<|im_start|>{t}<|im_end|>\n" for t in turns) + "<|im_start|>assistant\n"


def test_a_forced_call_has_a_grammar_llama_cpp_accepts() -> None:
    from llama_cpp.llama_grammar import LlamaGrammar

    assert forced_tools([WEATHER, NOW], "auto") is None
    assert forced_tools([WEATHER, NOW], "none") is None
    assert forced_tools([WEATHER, NOW], "required") == [WEATHER, NOW]
    assert forced_tools([WEATHER, NOW], NamedToolChoice.model_validate({"function": {"name": "now"}})) == [NOW]
    for fmt in ("hermes", "json"):
        grammar = tool_call_grammar([WEATHER, NOW], fmt, parallel=True)
        LlamaGrammar.from_string(grammar, verbose=False)
        assert '"\\"get_weather\\""' in grammar and '"\\"celsius\\""' in grammar
    assert "<tool_call>" in tool_call_grammar([NOW], "hermes", parallel=False)
    assert "<tool_call>" not in tool_call_grammar([NOW], "json", parallel=False)


def test_a_schema_the_converter_cannot_read_is_named() -> None:
    broken = Tool.model_validate(
        {"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/$defs/missing"}}}
    )
    with pytest.raises(BadToolSchema, match="'f'"):
        tool_call_grammar([broken], "hermes", parallel=False)


def test_two_functions_definitions_of_one_name_stay_apart() -> None:
    def with_point(name: str, point: dict[str, object]) -> Tool:
        parameters = {
            "type": "object",
            "properties": {"at": {"$ref": "#/$defs/Point"}},
            "required": ["at"],
            "$defs": {"Point": point},
        }
        return Tool.model_validate({"function": {"name": name, "parameters": parameters}})

    flat = with_point("flat", {"enum": ["north", "south"]})
    deep = with_point("deep", {"type": "object", "properties": {"depth": {"type": "integer"}}, "required": ["depth"]})
    rules = dict(
        line.split(" ::= ", 1) for line in tool_call_grammar([flat, deep], "json", parallel=False).splitlines()
    )
    assert rules["flat-arguments-at"] == "flat-Point" and rules["deep-arguments-at"] == "deep-Point"
    assert '"\\"north\\""' in rules["flat-Point"] and "depth" in rules["deep-Point"]
    # The caller's schema is left as it was.
    assert flat.function.parameters is not None and "Point" in flat.function.parameters["$defs"]
