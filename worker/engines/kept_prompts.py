"""Prompts kept in host memory beside the slots, so a later job with the same beginning restores
their KV cells instead of evaluating them again (llama-server keeps prompts the same way).

A slot holds the cells of its last sequence only until another prompt takes it; eight slots
remember eight prompts. Before a slot's cells are cut back for a prompt that shares less with
them, the engine saves that sequence's state here (llama_state_seq_get_data: the KV cells of
one sequence, about 23 KB per token for SmolLM2-135M), and a new prompt whose longest shared
prefix is here rather than in a slot gets it copied back (llama_state_seq_set_data), which takes
a fraction of a millisecond where evaluating it takes tens. The store is bounded in bytes and
forgets the least recently used prompts first.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

# Not worth a copy: a prompt this short costs little to evaluate again.
MIN_KEPT_TOKENS = 32


@dataclass(eq=False)
class Kept:
    tokens: list[int]  # what the saved cells hold, positions 0..n-1
    state: bytes
    used: int


class KeptPrompts:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = max(0, budget_bytes)
        self._entries: list[Kept] = []
        self._clock = itertools.count(1)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(len(entry.state) for entry in self._entries)

    def best(self, tokens: list[int]) -> tuple[Kept | None, int]:
        """The kept prompt sharing the longest prefix with tokens, and that length (0: none)."""
        found, longest = None, 0
        for entry in self._entries:
            shared = common_prefix(entry.tokens, tokens)
            if shared > longest:
                found, longest = entry, shared
        return found, longest

    def holds(self, tokens: list[int]) -> bool:
        """Whether these tokens (or a longer prompt that starts with them) are kept already."""
        return any(common_prefix(entry.tokens, tokens) == len(tokens) for entry in self._entries)

    def touch(self, entry: Kept) -> None:
        entry.used = next(self._clock)

    def keep(self, tokens: list[int], state: bytes) -> bool:
        """Keeps a saved state, forgetting least recently used ones to make room; False when it is
        larger than the whole budget (or too short to be worth it)."""
        if len(tokens) < MIN_KEPT_TOKENS or len(state) > self.budget_bytes:
            return False
        # A kept prefix of the new prompt says nothing the new one does not.
        self._entries = [e for e in self._entries if common_prefix(e.tokens, tokens) < len(e.tokens)]
        self._entries.sort(key=lambda e: e.used)
        total = self.nbytes
        while self._entries and total + len(state) > self.budget_bytes:
            total -= len(self._entries.pop(0).state)
        self._entries.append(Kept(list(tokens), state, next(self._clock)))
        return True

    def clear(self) -> None:
        self._entries.clear()


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix, by slice comparisons (C loops, not a Python one)."""
    n = min(len(a), len(b))
    if n == 0 or a[0] != b[0]:
        return 0
    if a[:n] == b[:n]:
        return n
    lo, hi = 1, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo
