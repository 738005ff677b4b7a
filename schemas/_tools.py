"""Tools a chat may call, in OpenAI's shapes: the functions offered, the choice, the calls made.

A job carries them as OpenAI spells them, so the gateway, `hostler batch` and the Python
clients hand them on unchanged; the worker renders them through the model's chat template
and parses its reply back into ToolCalls.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# OpenAI's rule for a function name; a template may print it anywhere, so nothing else gets in.
FUNCTION_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TOOLS = 128
MAX_TOOL_CALL_ID_CHARS = 256


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=FUNCTION_NAME_PATTERN, description="The function's name (letters, digits, _ and -).")
    description: str | None = Field(None, max_length=100_000, description="What it does, for the model.")
    parameters: dict[str, Any] | None = Field(
        None, description="A JSON schema of its arguments (an object); absent means it takes none."
    )
    strict: bool | None = Field(None, description="Accepted for OpenAI's SDKs; a forced call is always constrained.")

    @field_validator("parameters")
    @classmethod
    def _an_object(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None and schema.get("type", "object") != "object":
            raise ValueError(f"the arguments are an object: parameters needs type 'object', not {schema['type']!r}")
        return schema


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["function"] = Field("function", description="The only kind of tool there is.")
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=FUNCTION_NAME_PATTERN)


class NamedToolChoice(BaseModel):
    """tool_choice naming the function the model must call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["function"] = "function"
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


def check_unique_names(tools: list[Tool] | None) -> list[Tool] | None:
    """Tools whose function names differ: a call names the function it means."""
    names = [tool.function.name for tool in tools or ()]
    if len(set(names)) != len(names):
        raise ValueError(f"function names must be unique, got {names}")
    return tools


def check_tool_choice(choice: ToolChoice | None, tools: list[Tool] | None) -> ToolChoice | None:
    """A tool_choice that forces a call needs tools, and a named one must be among them.
    `tools` is None when they failed validation themselves (that error is reported)."""
    names = [tool.function.name for tool in tools or ()]
    if (choice == "required" or isinstance(choice, NamedToolChoice)) and not names:
        raise ValueError("it forces a call but no tools are given: give the functions the model may call")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise ValueError(f"it names function {choice.function.name!r}, which is not among tools {names}")
    return choice


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(max_length=256, description="The function called.")
    arguments: str = Field(description="Its arguments as a JSON text (an object), as OpenAI sends them.")


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        min_length=1, max_length=MAX_TOOL_CALL_ID_CHARS, description="Names the call; a tool message answers it."
    )
    type: Literal["function"] = "function"
    function: FunctionCall


def new_tool_call_id() -> str:
    """An id in OpenAI's form, `call_` and 24 random characters."""
    return "call_" + secrets.token_hex(12)
