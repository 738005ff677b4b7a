"""A streamed job's text pieces: what both clients hand out, and the sync client's Stream."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import AbstractContextManager

from hostler.schemas import CompletionResult, JobResult, StreamEvent, TokenEvent, TokenLogprob

from ._errors import HostlerError
from ._events import Followed
from ._follow import ending


class Piece(str):
    """A piece of a streamed job's text. `logprobs`: when the job asked for them (logprobs=N),
    the tokens whose text this piece carries, each with its log probability and its N most
    likely alternatives; None otherwise."""

    logprobs: tuple[TokenLogprob, ...] | None

    def __new__(cls, text: str, logprobs: tuple[TokenLogprob, ...] | None = None) -> Piece:
        piece = super().__new__(cls, text)
        piece.logprobs = logprobs
        return piece


class TextPieces:
    """The text pieces of one job's events; `result` is the whole result once it has ended."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.result: CompletionResult | None = None
        self._sent = 0
        self._tokens_sent = 0

    def piece(self, event: StreamEvent) -> Piece | None:
        """The text to hand out for an event (None: none); raises the job's error if it failed."""
        result = ending(self.job_id, event)
        if result is None:
            assert isinstance(event, TokenEvent)
            self._sent += len(event.text)
            logprobs = tuple(event.logprobs) if event.logprobs is not None else None
            self._tokens_sent += len(logprobs or ())
            return Piece(event.text, logprobs)
        self.result = completion(result)
        # After a gap the done event comes from the stored result: send what was missed.
        text = self.result.text
        if len(text) <= self._sent:
            return None
        missed = self.result.logprobs
        return Piece(text[self._sent :], tuple(missed[self._tokens_sent :]) if missed is not None else None)


class Pieces:
    """What both clients' streams share: `job_id` names the job; `result` holds the whole
    result (finish reason, usage) once the last piece has been read."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._text = TextPieces(job_id)

    @property
    def result(self) -> CompletionResult | None:
        return self._text.result


class Stream(Pieces, Iterator[Piece], AbstractContextManager["Stream"]):
    """A job's text pieces: `for piece in stream`; close() stops waiting, even before the
    first piece was read."""

    def __init__(self, followed: Followed) -> None:
        super().__init__(followed.job_id)
        self._followed = followed
        self._pieces = self._generate()

    def __next__(self) -> Piece:
        return next(self._pieces)

    def _generate(self) -> Generator[Piece, None, None]:
        try:
            for event in self._followed.events():
                piece = self._text.piece(event)
                if piece is not None:
                    yield piece
        finally:
            self._followed.close()

    def close(self) -> None:
        # A generator closed before it started never runs its finally block.
        self._pieces.close()
        self._followed.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def completion(result: JobResult) -> CompletionResult:
    if not isinstance(result, CompletionResult):
        raise HostlerError(f"expected a completion result, got {result.kind}")
    return result
