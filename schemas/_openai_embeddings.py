"""OpenAI's embeddings request and response bodies, shared by the gateway and `hostler batch`.

`input` takes OpenAI's four shapes: a string, a list of strings, a list of token ids, or a
list of such lists. It is checked by hand rather than as a pydantic union, so that a bad
input is refused with one sentence naming its index instead of an error per union member.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._embeddings import MAX_EMBEDDING_CHARS, MAX_EMBEDDING_DIMENSIONS, MAX_EMBEDDING_INPUTS, EmbeddingResult
from ._validation import describe_errors

EMBEDDINGS_URL = "/v1/embeddings"

_SHAPES = "a string, a list of strings, a list of token ids, or a list of lists of token ids"


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_ids(value: list[Any], where: str) -> list[int]:
    if not value:
        raise ValueError(f"{where} is an empty list of token ids")
    for position, token in enumerate(value):
        if not _is_token(token) or token < 0:
            raise ValueError(f"{where}[{position}] is {token!r}: token ids are integers from 0")
    return value


def _text(value: str, where: str) -> str:
    if not value:
        raise ValueError(f"{where} is an empty string: every input needs some text")
    if len(value) > MAX_EMBEDDING_CHARS:
        raise ValueError(f"{where} is {len(value)} characters; the limit is {MAX_EMBEDDING_CHARS}")
    return value


def embedding_inputs(value: Any) -> list[str | list[int]]:
    """OpenAI's `input` as a list of texts and token-id lists; ValueError naming what is wrong."""
    if isinstance(value, str):
        return [_text(value, "input")]
    if not isinstance(value, list):
        raise ValueError(f"input must be {_SHAPES}; got {_kind(value)}")
    if not value:
        raise ValueError("input is an empty list: give at least one text")
    if all(_is_token(item) for item in value):
        return [_token_ids(value, "input")]
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise ValueError(f"input has {len(value)} items; the limit is {MAX_EMBEDDING_INPUTS} per request")
    inputs: list[str | list[int]] = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            inputs.append(_text(item, f"input[{index}]"))
        elif isinstance(item, list):
            inputs.append(_token_ids(item, f"input[{index}]"))
        else:
            raise ValueError(f"input[{index}] is {_kind(item)}: input must be {_SHAPES}")
    return inputs


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=128, description="A hostler model id.")
    input: Any = Field(description=f"What to embed: {_SHAPES}.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: little-endian float32 bytes, base64."
    )
    dimensions: int | None = Field(
        None,
        ge=1,
        le=MAX_EMBEDDING_DIMENSIONS,
        description="Keep the first N dimensions, normalised again; at most the model's own size.",
    )
    user: str | None = Field(None, max_length=256, description="Accepted and ignored.")

    @field_validator("input")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        embedding_inputs(value)
        return value

    def inputs(self) -> list[str | list[int]]:
        return embedding_inputs(self.input)


def parse_embedding_body(body: Any) -> EmbeddingRequest:
    """The request body (already parsed JSON); raises ValueError naming what is wrong."""
    try:
        return EmbeddingRequest.model_validate(body)
    except ValidationError as exc:
        raise ValueError(describe_errors(exc).replace("Value error, ", "")) from None


def embedding_body(result: EmbeddingResult, encoding_format: Literal["float", "base64"] = "float") -> dict[str, Any]:
    """The response body OpenAI returns for an embeddings request."""
    vectors: list[Any] = result.data if encoding_format == "base64" else result.vectors
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": index, "embedding": vector} for index, vector in enumerate(vectors)],
        "model": result.model,
        "usage": {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.prompt_tokens},
    }
