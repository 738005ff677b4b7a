"""Stop strings over a stream of text pieces: pure policy, no engine.

A piece can only be sent once it is certain not to be the start of a stop string, so
the scanner holds back the longest tail that could still grow into one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StopScanner:
    stops: tuple[str, ...]
    _text: str = field(default="", init=False)
    _sent: int = field(default=0, init=False)
    stopped: bool = field(default=False, init=False)

    def feed(self, piece: str) -> str:
        """Adds generated text; returns what may be sent now (may be empty)."""
        if self.stopped:
            return ""
        self._text += piece
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            return self._release(cut)
        return self._release(len(self._text) - self._held_tail())

    def flush(self) -> str:
        """At the end of generation nothing more can complete a stop string: send the rest."""
        if self.stopped:
            return ""
        return self._release(len(self._text))

    @property
    def text(self) -> str:
        """Everything sent so far: the final text once generation ended."""
        return self._text[: self._sent]

    def _release(self, upto: int) -> str:
        upto = max(upto, self._sent)
        out = self._text[self._sent : upto]
        self._sent = upto
        if self.stopped:
            self._text = self._text[:upto]
        return out

    def _first_stop(self) -> int | None:
        best: int | None = None
        for stop in self.stops:
            # A stop can only begin in text not yet sent, and no earlier than len(stop) back.
            at = self._text.find(stop, max(0, self._sent - len(stop) + 1))
            if at != -1 and (best is None or at < best):
                best = at
        return best

    def _held_tail(self) -> int:
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
