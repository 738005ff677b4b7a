"""A generation in flight in the worker, and the result it ends with."""

from __future__ import annotations

from dataclasses import dataclass, field

from hostler.schemas import ChatJob, CompletionJob, CompletionResult, FinishReason, TokenLogprob, Usage
from hostler.worker.engines.protocol import StepOutput

from .events import JobEvents
from .jobstore import Claimed


@dataclass(eq=False)
class Running:
    """A generation in flight: its job, its channel, what it has produced so far."""

    claimed: Claimed
    job: CompletionJob | ChatJob
    publisher: JobEvents
    seq: int
    stop_at: float | None
    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # with params.logprobs: every token's so far
    logprobs_sent: int = 0  # how many of them went out in token events
    last: StepOutput | None = None

    @property
    def wants_logprobs(self) -> bool:
        return self.job.params.logprobs is not None

    def unsent_logprobs(self) -> list[TokenLogprob] | None:
        """The tokens not yet sent in a token event (an engine may hand some over before their text)."""
        if not self.wants_logprobs:
            return None
        unsent = self.logprobs[self.logprobs_sent :]
        self.logprobs_sent = len(self.logprobs)
        return unsent

    def take(self, output: StepOutput) -> None:
        """Adds one engine step's output for this sequence."""
        self.last = output
        self.logprobs.extend(output.logprobs)
        if output.piece:
            self.claimed.clock.piece()
            self.parts.append(output.piece)

    def result(self, model: str, finish_reason: FinishReason) -> CompletionResult:
        last = self.last
        return CompletionResult(
            model=model,
            text="".join(self.parts),
            finish_reason=finish_reason,
            usage=Usage(
                prompt_tokens=last.prompt_tokens if last is not None else 0,
                completion_tokens=last.completion_tokens if last is not None else 0,
            ),
            tool_calls=list(last.tool_calls) if last is not None else [],
            logprobs=self.logprobs if self.wants_logprobs else None,
        )
