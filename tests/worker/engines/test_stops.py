"""Stop strings over streamed pieces (pure policy)."""

from __future__ import annotations

from hostler.worker.engines.stops import StopScanner
from hypothesis import given
from hypothesis import strategies as st


def run(pieces: list[str], stops: tuple[str, ...]) -> tuple[str, list[str], bool]:
    scanner = StopScanner(stops)
    out = [scanner.feed(p) for p in pieces]
    out.append(scanner.flush())
    return scanner.text, [o for o in out if o], scanner.stopped


def test_stop_split_across_pieces_is_never_sent() -> None:
    text, sent, stopped = run(["Hello <", "|e", "nd|> more"], ("<|end|>",))
    assert text == "Hello " and "".join(sent) == "Hello " and stopped


def test_a_false_start_is_released() -> None:
    text, sent, stopped = run(["a <", "b"], ("<|end|>",))
    assert text == "a <b" and not stopped


def test_earliest_stop_wins() -> None:
    assert run(["xx B yy A"], ("A", "B"))[0] == "xx "


@given(st.lists(st.text(max_size=5), max_size=20), st.lists(st.text(min_size=1, max_size=4), max_size=3))
def test_sent_text_is_the_text_before_the_first_stop(pieces: list[str], stops: list[str]) -> None:
    text, sent, _ = run(pieces, tuple(stops))
    whole = "".join(pieces)
    cuts = [whole.find(s) for s in stops if s in whole]
    assert text == (whole[: min(cuts)] if cuts else whole)
    assert "".join(sent) == text
