"""Token log probabilities: what a worker sends with each token, and OpenAI's two spellings of them.

A worker computes them from the model's logits for the sequence (log-softmax over the whole
vocabulary, before any sampler stage), so they are the model's own probabilities and equal
llama-cpp-python's `create_completion(logprobs=...)` for the same tokens. They travel with the
token events (the tokens whose text that event carries) and, whole, in the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# OpenAI's bound for chat's top_logprobs; completions' logprobs (5 at OpenAI) takes as many.
MAX_TOP_LOGPROBS = 20


class TopLogprob(BaseModel):
    """One of the most likely tokens at a position."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str = Field(description="The token's text (bytes that are no whole UTF-8 character are left out).")
    logprob: float = Field(description="Natural log of its probability.")
    bytes: list[int] = Field(description="The token's UTF-8 bytes, whole.")


class TokenLogprob(BaseModel):
    """One generated token: its log probability and the most likely alternatives at its position."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str = Field(description="The token's text (bytes that are no whole UTF-8 character are left out).")
    logprob: float = Field(description="Natural log of its probability under the model.")
    bytes: list[int] = Field(description="The token's UTF-8 bytes, whole.")
    top_logprobs: list[TopLogprob] = Field(
        default_factory=list, max_length=MAX_TOP_LOGPROBS, description="The most likely tokens, most likely first."
    )


def chat_logprobs(tokens: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    """A chat choice's (or chunk's) `logprobs`: `{"content": [...]}` as OpenAI spells it."""
    if tokens is None:
        return None
    return {"content": [token.model_dump(mode="json") for token in tokens], "refusal": None}


def completion_logprobs(tokens: Sequence[TokenLogprob] | None, text_offset: int = 0) -> dict[str, Any] | None:
    """A text completion choice's `logprobs` (OpenAI's legacy shape): parallel lists, each
    position's alternatives as {token: logprob} with the chosen token among them, as
    llama-cpp-python returns them. text_offset: where the first token's text starts."""
    if tokens is None:
        return None
    offsets = []
    for token in tokens:
        offsets.append(text_offset)
        text_offset += len(token.token)
    return {
        "tokens": [token.token for token in tokens],
        "text_offset": offsets,
        "token_logprobs": [token.logprob for token in tokens],
        "top_logprobs": [
            {**{top.token: top.logprob for top in token.top_logprobs}, token.token: token.logprob} for token in tokens
        ],
    }
