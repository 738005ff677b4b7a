"""Embeddings on the wire: what an embedding job may carry and what it returns.

A job embeds many inputs at once (texts, or token ids as a model's tokenizer made them).
Its result carries one vector per input as base64 of little-endian float32, the numbers
llama.cpp computed, normalised to unit length: a third of the bytes of JSON floats, so a
job of thousands of vectors stays small in Redis and in its done event. `vectors` decodes
them; the gateway turns them into OpenAI's float lists or passes the base64 on.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from ._results import Usage

# OpenAI's limit of inputs in one embeddings request.
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_CHARS = 4_000_000
MAX_INPUT_TOKEN_IDS = 1_048_576
# Larger than any model's hidden size today; dimensions above the model's own are refused by the worker.
MAX_EMBEDDING_DIMENSIONS = 65_536

EmbeddingText = Annotated[str, Field(min_length=1, max_length=MAX_EMBEDDING_CHARS)]
TokenIds = Annotated[
    list[Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]], Field(min_length=1, max_length=MAX_INPUT_TOKEN_IDS)
]
EmbeddingInput = EmbeddingText | TokenIds
# How the per-token states become one vector: the model's own pooling (its GGUF
# `<arch>.pooling_type`), or mean for models that declare none.
Pooling = Literal["mean", "cls", "last"]


def encode_vector(vector: Sequence[float]) -> str:
    """base64 of the vector's float32 values, little-endian."""
    values = array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def decode_vector(data: str) -> list[float]:
    values = array("f")
    values.frombytes(base64.b64decode(data))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


class EmbeddingResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["embedding"] = "embedding"
    model: str = Field(description="The model id that produced it.")
    dimensions: int = Field(ge=1, description="Length of every vector.")
    pooling: Pooling = Field(description="How each input's token states were pooled into its vector.")
    data: list[str] = Field(
        description="One vector per input, in input order: float32 little-endian, base64, unit L2 norm."
    )
    usage: Usage = Field(description="prompt_tokens: tokens of all inputs; completion_tokens: 0.")

    @property
    def vectors(self) -> list[list[float]]:
        """The vectors as floats (decoded at each access)."""
        return [decode_vector(item) for item in self.data]
