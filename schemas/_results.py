"""What a finished job returns; stored as the rq job result and sent in the done event."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ._logprobs import TokenLogprob
from ._params import LoadParams
from ._tools import ToolCall

# tool_calls: the reply was parsed into tool calls (CompletionResult.tool_calls).
FinishReason = Literal["stop", "length", "canceled", "tool_calls"]


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: int = Field(ge=0, description="Tokens in the prompt, template applied.")
    completion_tokens: int = Field(ge=0, description="Tokens generated.")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class CompletionResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["completion"] = "completion"
    model: str = Field(description="The model id that produced it.")
    text: str = Field(description="The whole generated text, equal to the streamed pieces joined.")
    finish_reason: FinishReason = Field(description="stop: EOS or a stop string; length: max_tokens.")
    usage: Usage
    logprobs: list[TokenLogprob] | None = Field(
        None, description="Each generated token's log probability, when the job asked for them (params.logprobs)."
    )
    tool_calls: list[ToolCall] = Field(
        default_factory=list,
        description="The calls a chat with tools made; `text` is then what the reply said besides them.",
    )


class TokenCountResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["token_count"] = "token_count"
    model: str
    count: int = Field(ge=0, description="Tokens the model's tokenizer makes of the text, BOS included.")


class LoadResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["load"] = "load"
    model: str
    params: LoadParams
    reloaded: bool = Field(description="False when the model was already loaded with these params.")
    seconds: float = Field(ge=0.0, description="Time spent loading.")


class UnloadResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["unload"] = "unload"
    model: str
    was_loaded: bool
