"""Download progress for a person: a tqdm bar on a terminal, a plain line now and then otherwise."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO

from hostler.schemas import format_bytes
from hostler.worker.models.pull import PullProgress

# Without a terminal (a log, CI), a line at most this often, and at each file's end.
LINE_EVERY_S = 2.0


class ProgressPrinter:
    """A pull's progress callback that draws for a person (use it as a context manager)."""

    def __init__(self, stream: TextIO | None = None, *, bar: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self._tqdm: Any = None
        self._file: str | None = None
        self._last_line = 0.0
        self._last: PullProgress | None = None
        self._printed: PullProgress | None = None

    def __call__(self, event: PullProgress) -> None:
        if event.file != self._file:
            self._finish_file()
            self._file = event.file
            self._start_file(event)
        self._last = event
        if self._tqdm is not None:
            self._tqdm.n = event.file_done
            self._tqdm.refresh()
        elif time.monotonic() - self._last_line >= LINE_EVERY_S:
            self._line(event)

    def _start_file(self, event: PullProgress) -> None:
        if self.bar:
            try:
                from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]
            except ImportError:
                self.bar = False
            else:
                self._tqdm = tqdm(
                    total=event.file_total,
                    initial=event.file_done,
                    desc=event.file[-40:],
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    file=self.stream,
                )
                return
        self._line(event)

    def _finish_file(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self._last is not None and self._last != self._printed:
            self._line(self._last)  # where each file ended, whatever the clock said

    def _line(self, event: PullProgress) -> None:
        total = f" of {format_bytes(event.file_total)}" if event.file_total is not None else ""
        share = f" ({100 * event.file_done // event.file_total}%)" if event.file_total else ""
        print(f"{event.file}: {format_bytes(event.file_done)}{total}{share}", file=self.stream, flush=True)
        self._last_line = time.monotonic()
        self._printed = event

    def __enter__(self) -> ProgressPrinter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finish_file()
