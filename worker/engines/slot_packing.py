"""Keeping the busy slots of a split KV cache consecutive: which sequence moves where.

With one KV stream per slot, llama.cpp cuts every batch into physical batches of consecutive
sequence ids (llama_batch_allocr::split_equal, sequential), and each physical batch is a whole
graph: on SmolLM2-135M with 2 CPU cores a step of 4 sequences took 22 ms in slots 0-3, 30 ms in
slots 0, 1, 4, 5 and 44 ms in slots 0, 2, 4, 6; seven with one gap among them took 42 ms against
36 ms without. Slots free up wherever sequences happen to end, so the engine moves a sequence's
cells (llama_state_seq_get_data / set_data, about 0.6 ms for 160 tokens there) from outside into
the gap, and a new sequence takes a free slot that keeps the run whole when its prompt cache
allows. Pure policy: the engine does the copying (slot_cache.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection


def one_run(busy: Collection[int]) -> bool:
    """Whether the busy slot indices are consecutive (an empty set is)."""
    return not busy or max(busy) - min(busy) + 1 == len(busy)


def packing_moves(busy: Collection[int], n_slots: int, cells: Callable[[int], int]) -> list[tuple[int, int]]:
    """(from, to) moves that leave the busy slots consecutive: the fewest moves, and among those
    the fewest cells to copy (cells(i): how many slot i holds)."""
    if one_run(busy):
        return []
    k = len(busy)
    best: tuple[tuple[int, int], int] | None = None
    for start in range(n_slots - k + 1):
        outside = [i for i in busy if not start <= i < start + k]
        cost = (len(outside), sum(cells(i) for i in outside))
        if best is None or cost < best[0]:
            best = (cost, start)
    assert best is not None
    start = best[1]
    movers = sorted(i for i in busy if not start <= i < start + k)
    gaps = [i for i in range(start, start + k) if i not in busy]
    return list(zip(movers, gaps, strict=True))
