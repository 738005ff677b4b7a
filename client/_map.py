"""map()'s bookkeeping, the same for both clients: what to submit next, what a failure does,
and progress. The clients keep the window of jobs in flight and do the waiting."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sized
from typing import Any

from hostler.schemas import CompletionResult

from ._errors import JobFailed
from ._kwargs import MapOptions, split
from ._progress import MapProgress
from ._requests import Messages, check_in_flight, prompt_or_messages


class InOrder:
    """Inputs submitted a window ahead of the result being waited on; results in input order."""

    def __init__(
        self, inputs: Iterable[str | Messages], kwargs: Mapping[str, Any], *, max_in_flight: int, timeout: float
    ) -> None:
        options, params = split(kwargs, MapOptions)
        self.max_in_flight = check_in_flight(options.get("max_in_flight", max_in_flight))
        # The longest wait for one result, and for room on a full queue before each submit.
        self.wait_s: float = timeout if options.get("timeout") is None else options["timeout"]
        self.submit_kwargs: dict[str, Any] = {
            "priority": options.get("priority", "batch"),
            "job_timeout": options.get("job_timeout"),
            "retries": options.get("retries", 0),
            "wait_when_full": self.wait_s,
            **params,
        }
        self._return_exceptions = options.get("return_exceptions", False)
        total = len(inputs) if isinstance(inputs, Sized) else None
        self._report = MapProgress(total, options.get("on_progress"), options.get("progress", False))
        self._items = iter(inputs)

    def more(self, in_flight: int) -> list[tuple[str | None, Messages | None]]:
        """The (prompt, messages) of the inputs to submit now to fill the window again."""
        return [prompt_or_messages(item) for item in itertools.islice(self._items, self.max_in_flight - in_flight)]

    def failed(self, failure: JobFailed) -> JobFailed:
        """A failed job is yielded with return_exceptions=True, and raised otherwise."""
        if not self._return_exceptions:
            raise failure
        return failure

    def record(self, outcome: CompletionResult | JobFailed) -> CompletionResult | JobFailed:
        self._report.record(outcome.usage.completion_tokens if isinstance(outcome, CompletionResult) else None)
        return outcome

    def close(self) -> None:
        self._report.close()
