"""How a host's cores are divided among its workers (worker/control/cores.py)."""

from __future__ import annotations

from hostler.worker.control.cores import share_cores


def test_one_worker_gets_every_core() -> None:
    assert share_cores([3, 1, 2, 0], ["a"]) == {"a": (0, 1, 2, 3)}


def test_workers_get_disjoint_contiguous_runs_the_first_ones_the_extra_cores() -> None:
    shares = share_cores(range(8), ["a", "b", "c"])
    assert shares == {"a": (0, 1, 2), "b": (3, 4, 5), "c": (6, 7)}
    assert sorted(core for run in shares.values() for core in run) == list(range(8))


def test_more_workers_than_cores_share_them_in_turn() -> None:
    assert share_cores([0, 1], ["a", "b", "c"]) == {"a": (0,), "b": (1,), "c": (0,)}


def test_cores_outside_a_contiguous_range_and_no_workers() -> None:
    assert share_cores([2, 5, 9, 11], [10, 20]) == {10: (2, 5), 20: (9, 11)}
    assert share_cores([0, 1], []) == {}
    assert share_cores([], ["a"]) == {}
