"""The soak's report: counts, latency percentiles, throughput and every problem the audit found."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hostler.client._connection import mask_url

__all__ = ["SoakReport", "percentile"]


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


@dataclass
class SoakReport:
    url: str
    model: str
    duration_s: float
    streams: int
    batch: int
    # From the first enqueue until every job had ended (or the settle timeout).
    load_s: float
    stream_jobs: int
    batch_jobs: int
    finished: int
    failed: int
    canceled: int
    lost: int
    end_codes: dict[str, int]
    lost_jobs: list[str]
    stream_latency_s: list[float]
    stream_first_piece_s: list[float]
    batch_latency_s: list[float]
    mismatches: list[str]
    exactly_once_violations: list[str]
    leftover_keys: list[str]
    client_errors: dict[str, int]
    queue_full: int
    not_submitted: int
    calls_per_stream: list[int]
    # Filled by main() when it started the stack itself: keys left after `hostler up` exited.
    after_shutdown: list[str] | None = None

    @property
    def total(self) -> int:
        return self.stream_jobs + self.batch_jobs

    @property
    def ok(self) -> bool:
        return (
            self.finished == self.total
            and not self.mismatches
            and not self.exactly_once_violations
            and not self.leftover_keys
            and not self.client_errors
            and not self.not_submitted
            and not self.after_shutdown
        )

    def summary(self) -> str:
        def listing(title: str, items: Sequence[str], limit: int = 10) -> list[str]:
            lines = [f"{title}: {len(items)}"]
            lines += [f"  {item}" for item in items[:limit]]
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")
            return lines

        per_stream = sorted(self.calls_per_stream) or [0]
        rate = self.finished / self.load_s if self.load_s > 0 else 0.0
        lines = [
            f"soak on {self.model} at {mask_url(self.url)}: {self.duration_s:g} s, {self.streams} streaming clients, "
            f"{self.batch} batch jobs",
            f"jobs: {self.total} ({self.stream_jobs} streamed, {self.batch_jobs} batch): finished {self.finished}, "
            f"failed {self.failed}, canceled {self.canceled}, lost {self.lost}",
            f"stream latency: p50 {_ms(percentile(self.stream_latency_s, 50))}, "
            f"p99 {_ms(percentile(self.stream_latency_s, 99))} "
            f"(first piece p50 {_ms(percentile(self.stream_first_piece_s, 50))}, "
            f"p99 {_ms(percentile(self.stream_first_piece_s, 99))}); "
            f"jobs per stream {per_stream[0]}..{per_stream[-1]}",
            f"batch latency (enqueue to end): p50 {_ms(percentile(self.batch_latency_s, 50))}, "
            f"p99 {_ms(percentile(self.batch_latency_s, 99))}",
            f"throughput: {rate:.1f} jobs/s ({self.finished} finished in {self.load_s:.1f} s, first enqueue to "
            f"last end)",
            f"calls refused by the full queue after waiting: {self.queue_full}; "
            f"batch jobs not submitted: {self.not_submitted}",
        ]
        if self.end_codes:
            lines.append("ended without a result: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.end_codes.items())))
        if self.client_errors:
            lines.append("client errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.client_errors.items())))
        if self.lost_jobs:
            lines += listing("lost jobs", self.lost_jobs)
        lines += listing("text mismatches", self.mismatches)
        lines += listing("ended other than exactly once", self.exactly_once_violations)
        lines += listing("leftover keys", self.leftover_keys)
        if self.after_shutdown is not None:
            lines += listing("leftover keys after hostler up exited", self.after_shutdown)
        lines.append("result: " + ("OK" if self.ok else "PROBLEMS"))
        return "\n".join(lines)
