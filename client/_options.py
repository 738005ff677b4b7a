"""How a job is queued (priority, start deadline, retries), checked before anything is written."""

from __future__ import annotations

from dataclasses import dataclass

from hostler.schemas import MAX_JOB_SECONDS, PRIORITIES, Priority, parse_duration

from ._errors import InvalidRequest


@dataclass(frozen=True)
class Options:
    """How a job is queued, as opposed to what it asks the model."""

    priority: Priority = "interactive"
    start_within_s: float | None = None
    retries: int = 0

    @classmethod
    def of(cls, priority: str, start_within: float | str | None, retries: int) -> Options:
        if priority not in PRIORITIES:
            raise InvalidRequest(f"invalid priority {priority!r}: use one of {', '.join(PRIORITIES)}")
        if not 0 <= retries <= 100:
            raise InvalidRequest(f"invalid retries {retries}: use 0 to 100")
        return cls(priority, seconds(start_within), retries)


def seconds(value: float | str | None) -> float | None:
    """A duration in seconds or as '10m', '1h'; None stays None."""
    if value is None:
        return None
    try:
        parsed = parse_duration(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if not 0 < parsed <= MAX_JOB_SECONDS:
        raise InvalidRequest(f"invalid duration {value!r}: use more than 0 and at most {MAX_JOB_SECONDS:.0f} s")
    return parsed
