"""Sampling and load parameters, with the bounds every writer of a job must respect."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ._logprobs import MAX_TOP_LOGPROBS

MAX_STOP_SEQUENCES = 16
# A GBNF grammar's longest text; a JSON schema is bounded by the payload's size only.
MAX_GRAMMAR_CHARS = 1_000_000
# The seed llama.cpp's server and CLI take as "random"; accepted wherever a seed is.
RANDOM_SEED = -1
# One stop sequence, as SamplingParams and OpenAI's request bodies take it.
StopString = Annotated[str, Field(min_length=1, max_length=256)]


class SamplingParams(BaseModel):
    """Sampling parameters, named as in OpenAI's and llama.cpp's APIs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(256, ge=1, le=131_072, description="Most tokens to generate.")
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="0 means greedy decoding.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(40, ge=0, le=100_000, description="Keep the k most likely tokens; 0 keeps all.")
    min_p: float = Field(0.05, ge=0.0, le=1.0, description="Drop tokens below min_p times the top one.")
    stop: list[StopString] = Field(
        default_factory=list,
        max_length=MAX_STOP_SEQUENCES,
        description="Generation ends before the first of these strings; it is not returned.",
    )
    seed: int | None = Field(
        None, ge=RANDOM_SEED, le=2**32 - 1, description="RNG seed; None or -1 (llama.cpp's spelling) picks one."
    )
    repeat_penalty: float = Field(1.0, ge=0.0, le=10.0, description="llama.cpp repetition penalty.")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="OpenAI presence penalty.")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="OpenAI frequency penalty.")
    grammar: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_GRAMMAR_CHARS,
        description="A GBNF grammar (llama.cpp's) the output must match, enforced while sampling; GGUF models only.",
    )
    json_schema: dict[str, Any] | None = Field(
        None,
        description="A JSON schema the output must validate against; the worker turns it into a grammar "
        "with llama.cpp's converter. Not together with grammar.",
    )
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Return each generated token's log probability with this many most likely alternatives "
        "(0: the token's own only); None returns none.",
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value: object) -> object:
        # OpenAI accepts a bare string for a single stop sequence.
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_constraint(self) -> SamplingParams:
        if self.grammar is not None and self.json_schema is not None:
            raise ValueError("give grammar or json_schema, not both")
        return self

    @field_validator("seed")
    @classmethod
    def _random_seed(cls, value: int | None) -> int | None:
        return random_seed_as_none(value)


def random_seed_as_none(value: int | None) -> int | None:
    """llama.cpp's users send seed -1 for "pick one"; hostler says that with None."""
    return None if value == RANDOM_SEED else value


def sampling_bounds(name: str) -> dict[str, Any]:
    """A SamplingParams field's numeric bounds as Field() keywords (ge, gt, le, lt), for models
    that restate the field (OpenAI's request bodies) without restating its numbers."""
    bounds: dict[str, Any] = {}
    for constraint in SamplingParams.model_fields[name].metadata:
        for key in ("ge", "gt", "le", "lt"):
            value = getattr(constraint, key, None)
            if value is not None:
                bounds[key] = value
    return bounds


class LoadParams(BaseModel):
    """How a model is loaded; a load with different params reloads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_ctx: int = Field(2048, ge=16, le=1_048_576, description="Context length in tokens.")
    n_batch: int = Field(512, ge=1, le=65_536, description="Prompt tokens evaluated per batch.")
    n_threads: int | None = Field(None, ge=1, le=1024, description="CPU threads; None lets the engine pick.")
    n_gpu_layers: int = Field(0, ge=-1, le=100_000, description="Layers offloaded to the GPU; -1 is all.")
    seed: int | None = Field(
        None, ge=RANDOM_SEED, le=2**32 - 1, description="Default RNG seed for this model; None or -1: random."
    )
    # Kept so that model.yaml files and clients that set it still validate: every job now reuses
    # the longest prefix any slot holds (the shared prompt cache of continuous batching).
    cache_prompt: bool = Field(
        False,
        deprecated="the prompt cache is always on and shared across jobs; this setting has no effect",
        description="No effect: every job reuses the longest cached prompt prefix of any slot.",
    )
    n_parallel: int = Field(
        8,
        ge=1,
        le=256,
        description="Sequences decoded together (slots, continuous batching); each gets n_ctx tokens of context.",
    )
    cache_ram_mib: int | None = Field(
        None,
        ge=0,
        le=1_048_576,
        description="Host memory (MiB) for prompts kept beside the slots, whose KV cells a later job with "
        "the same beginning copies back instead of evaluating them; None: as much as the slots' KV cache; 0: none.",
    )
    flash_attn: bool | None = Field(
        None,
        description="llama.cpp flash attention; None lets llama.cpp use it where the backend supports it "
        "(its default, and llama-server's).",
    )

    @field_validator("seed")
    @classmethod
    def _random_seed(cls, value: int | None) -> int | None:
        return random_seed_as_none(value)
