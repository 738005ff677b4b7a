"""From sampled token ids to text pieces: the generation policy every engine shares.

An engine supplies the tokens as its runtime samples them and how to turn one into text;
this decides when generation ends (an end-of-generation token, a stop string, max_tokens,
a cancellation between tokens) and what may be sent so far, so the engines end a
generation the same way and report the same finish reasons and token counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from hostler.schemas import ErrorCode, SamplingParams

from .protocol import ContextExceeded, EngineError, Generation, ShouldStop
from .stops import StopScanner


def context_budget(model: str, prompt_tokens: int, n_ctx: int, max_tokens: int) -> int:
    """The most tokens a generation may add; a prompt that leaves no room fails before any work."""
    if prompt_tokens >= n_ctx:
        raise ContextExceeded(
            f"the prompt is {prompt_tokens} tokens but the context of {model!r} is {n_ctx} "
            "tokens (n_ctx); shorten it or load the model with a larger n_ctx"
        )
    return min(max_tokens, n_ctx - prompt_tokens)


class Unsupported(EngineError):
    """A sampling feature this engine does not have: refused, never silently ignored."""

    code = ErrorCode.INVALID_REQUEST


def refuse_llama_only(params: SamplingParams, engine: str) -> None:
    """For engines without llama.cpp's grammar sampler and logits: structured output and logprobs
    are refused by name rather than quietly left out of the reply."""
    if params.grammar is not None or params.json_schema is not None:
        raise Unsupported(
            f"the {engine} engine does not support structured output (grammar, json_schema, response_format "
            "json_object or json_schema): hostler enforces it with llama.cpp's grammar sampler, so only GGUF "
            "models have it; use a GGUF model or leave them unset"
        )
    if params.logprobs is not None:
        raise Unsupported(
            f"the {engine} engine does not return logprobs (logprobs, top_logprobs): only GGUF models do; "
            "use a GGUF model or leave them unset"
        )


def decode_pieces(
    tokens: Iterator[int],
    *,
    is_end: Callable[[int], bool],
    text_of: Callable[[int], str],
    final_text: Callable[[], str],
    stops: tuple[str, ...],
    max_tokens: int,
    should_stop: ShouldStop,
    generation: Generation,
) -> Iterator[str]:
    """Text pieces of `tokens` until the generation ends; sets generation's finish_reason and
    completion_tokens as it goes.

    text_of(token) is the text a token adds (an incremental detokenizer may hold part of
    it back until a later token completes a character); final_text() is what it still holds
    once generation ended. The end token itself is neither counted nor shown.
    """
    scanner = StopScanner(stops)
    count = 0
    generation.finish_reason = "length"
    for token in tokens:
        if is_end(token):
            generation.finish_reason = "stop"
            break
        count += 1
        generation.completion_tokens = count
        out = scanner.feed(text_of(token))
        if out:
            yield out
        if scanner.stopped:
            generation.finish_reason = "stop"
            break
        if count >= max_tokens:
            break
        if should_stop():
            generation.finish_reason = "canceled"
            break
    tail = scanner.feed(final_text())
    tail += scanner.flush()
    if tail:
        yield tail
