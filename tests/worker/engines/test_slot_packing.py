"""Which sequences move so that busy slots stay consecutive (worker/engines/slot_packing.py)."""

from __future__ import annotations

from hostler.worker.engines.slot_packing import one_run, packing_moves


def test_one_run() -> None:
    assert one_run([]) and one_run([3]) and one_run([2, 0, 1])
    assert not one_run([0, 2]) and not one_run([0, 1, 2, 4])


def after(busy: list[int], moves: list[tuple[int, int]]) -> set[int]:
    placed = set(busy)
    for source, target in moves:
        assert source in placed and target not in placed
        placed = (placed - {source}) | {target}
    return placed


def test_consecutive_slots_stay_where_they_are() -> None:
    assert packing_moves([2, 3, 4], 8, lambda i: 10) == []
    assert packing_moves([], 8, lambda i: 10) == []


def test_a_gap_is_filled_with_the_fewest_moves() -> None:
    busy = [0, 1, 2, 4, 5, 6, 7]
    moves = packing_moves(busy, 8, lambda i: 10)
    assert len(moves) == 1 and one_run(after(busy, moves))
    busy = [1, 3, 5, 7]
    moves = packing_moves(busy, 8, lambda i: 10)
    assert len(moves) == 2 and one_run(after(busy, moves))


def test_among_as_few_moves_the_fewest_cells_are_copied() -> None:
    cells = {0: 500, 1: 20, 3: 30}
    # Either slot 0 (500 cells) moves to 2, or slot 3 (30 cells) moves to 2.
    assert packing_moves([0, 1, 3], 8, cells.__getitem__) == [(3, 2)]
    cells = {0: 5, 1: 20, 3: 30}
    assert packing_moves([0, 1, 3], 8, cells.__getitem__) == [(0, 2)]
