"""The bounded store of prompts kept beside the slots (worker/engines/kept_prompts.py)."""

from __future__ import annotations

from hostler.worker.engines.kept_prompts import MIN_KEPT_TOKENS, KeptPrompts, common_prefix

A = list(range(100, 100 + 2 * MIN_KEPT_TOKENS))
B = list(range(500, 500 + 2 * MIN_KEPT_TOKENS))


def test_the_longest_shared_prefix_wins() -> None:
    kept = KeptPrompts(10_000)
    assert kept.keep(A, b"a" * 100) and kept.keep(B, b"b" * 100)
    entry, shared = kept.best(A[:40] + [1, 2, 3])
    assert entry is not None and entry.state == b"a" * 100 and shared == 40
    assert kept.best([7, 8, 9]) == (None, 0)


def test_it_never_holds_more_than_its_budget_and_forgets_the_least_recently_used() -> None:
    kept = KeptPrompts(250)
    kept.keep(A, b"a" * 100)
    kept.keep(B, b"b" * 100)
    entry, _ = kept.best(A)
    assert entry is not None
    kept.touch(entry)  # A used after B: B goes first
    kept.keep([9, *A[1:]], b"c" * 100)
    assert kept.nbytes <= 250 and len(kept) == 2
    assert kept.best(B)[1] == 0 and kept.best(A)[1] == len(A)
    assert not kept.keep(B, b"x" * 251), "larger than the whole budget"
    assert not KeptPrompts(0).keep(A, b"a")


def test_a_longer_prompt_replaces_its_own_prefix_and_short_ones_are_not_kept() -> None:
    kept = KeptPrompts(10_000)
    kept.keep(A, b"a" * 10)
    kept.keep(A + [1, 2], b"b" * 10)
    assert len(kept) == 1 and kept.holds(A) and kept.holds(A + [1, 2])
    assert not kept.keep(list(range(MIN_KEPT_TOKENS - 1)), b"s")


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([], [1]) == 0 and common_prefix([2], [1]) == 0
