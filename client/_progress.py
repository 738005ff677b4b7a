"""Progress of many jobs: a one-line bar on a terminal, periodic plain lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

# Plain (non-terminal) output prints at most this often, so logs stay readable.
PLAIN_EVERY_S = 10.0
BAR_EVERY_S = 0.2


@dataclass
class Progress:
    """Counts jobs and tokens; `update` prints when enough time has passed."""

    total: int | None
    label: str = "jobs"
    out: TextIO = field(default_factory=lambda: sys.stderr)
    done: int = 0
    failed: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    _printed_at: float = 0.0

    @property
    def terminal(self) -> bool:
        return self.out.isatty()

    def update(self, *, done: int = 0, failed: int = 0, tokens: int = 0) -> None:
        self.done += done
        self.failed += failed
        self.tokens += tokens
        now = time.monotonic()
        if now - self._printed_at >= (BAR_EVERY_S if self.terminal else PLAIN_EVERY_S):
            self._print(now)

    def finish(self) -> None:
        self._print(time.monotonic())
        if self.terminal:
            self.out.write("\n")
        self.out.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max(1e-9, (now if now is not None else time.monotonic()) - self.started)
        rate = self.tokens / elapsed
        finished = self.done + self.failed
        parts = [f"{finished}/{self.total}" if self.total is not None else f"{finished}", self.label]
        parts.append(f"{rate:.1f} tok/s")
        if self.total and finished:
            remaining = (self.total - finished) * elapsed / finished
            parts.append(f"ETA {_clock(remaining)}")
        if self.failed:
            parts.append(f"{self.failed} failed")
        return " · ".join(parts)

    def _print(self, now: float) -> None:
        self._printed_at = now
        if self.terminal:
            self.out.write("\r\033[K" + self._bar() + self.line(now))
        else:
            self.out.write(self.line(now) + "\n")
        self.out.flush()

    def _bar(self, width: int = 24) -> str:
        if not self.total:
            return ""
        filled = int(width * (self.done + self.failed) / self.total)
        return "[" + "#" * filled + "." * (width - filled) + "] "


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class MapProgress:
    """What map() reports after each result: a callback, a bar, or both."""

    def __init__(self, total: int | None, on_progress: Callable[[int, int | None], None] | None, bar: bool) -> None:
        self.total = total
        self.finished = 0
        self._on_progress = on_progress
        self._bar = Progress(total) if bar else None

    def record(self, tokens: int | None) -> None:
        """One more result: its completion tokens, or None when the job failed."""
        self.finished += 1
        if self._bar is not None:
            self._bar.update(done=int(tokens is not None), failed=int(tokens is None), tokens=tokens or 0)
        if self._on_progress is not None:
            self._on_progress(self.finished, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.finish()
