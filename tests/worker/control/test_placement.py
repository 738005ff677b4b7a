"""The placement policy on its own: pure functions over snapshots of hosts."""

from __future__ import annotations

from hostler.worker.control.placement import (
    HostView,
    NoFit,
    Placement,
    Resident,
    choose_host,
    fits_once_settled,
    keep_alive_expired,
)

MIB = 1024**2


def host(name: str, capacity_mib: int, *residents: Resident, models: tuple[str, ...] = ("a", "b", "c")) -> HostView:
    return HostView(name, capacity_mib * MIB, 64 * 1024 * MIB, frozenset(models), tuple(residents))


def idle(model: str, mib: int, last_used: float, *, pinned: bool = False) -> Resident:
    return Resident(model, mib * MIB, rss=mib * MIB, busy=False, pinned=pinned, last_used=last_used)


def busy(model: str, mib: int) -> Resident:
    return Resident(model, mib * MIB, rss=mib * MIB, busy=True, last_used=0.0)


def test_most_free_and_best_fit_choose_different_hosts() -> None:
    hosts = [host("big", 1000), host("small", 400)]
    assert choose_host("a", 300 * MIB, hosts, "most-free") == Placement("big")
    assert choose_host("a", 300 * MIB, hosts, "best-fit") == Placement("small")


def test_a_host_without_the_model_on_disk_is_never_chosen() -> None:
    hosts = [host("big", 1000, models=("b",)), host("small", 400)]
    assert choose_host("a", 300 * MIB, hosts, "most-free") == Placement("small")


def test_reservations_count_against_free_memory() -> None:
    reserved = Resident("b", 500 * MIB, rss=0, busy=False, last_used=1.0)
    hosts = [host("one", 1000, reserved), host("two", 700)]
    assert choose_host("a", 600 * MIB, hosts, "most-free") == Placement("two")


def test_a_reservation_already_taken_by_the_worker_is_not_counted_twice() -> None:
    # 600 MiB held, 400 of it already out of the OS's available figure (700 MiB).
    loading = Resident("b", 600 * MIB, rss=400 * MIB, busy=True)
    view = HostView("one", 2000 * MIB, 700 * MIB, frozenset({"a", "b"}), (loading,))
    assert view.free == 500 * MIB


def test_available_ram_limits_a_host_even_under_its_cap() -> None:
    tight = HostView("tight", 4096 * MIB, 200 * MIB, frozenset({"a"}))
    roomy = HostView("roomy", 1024 * MIB, 900 * MIB, frozenset({"a"}))
    assert choose_host("a", 300 * MIB, [tight, roomy], "most-free") == Placement("roomy")


def test_evicts_the_least_recently_used_idle_model() -> None:
    one = host("one", 1000, idle("b", 400, last_used=100.0), idle("c", 400, last_used=50.0))
    assert choose_host("a", 500 * MIB, [one]) == Placement("one", ("c",))


def test_evicts_several_when_one_is_not_enough() -> None:
    one = host("one", 1000, idle("b", 400, last_used=100.0), idle("c", 400, last_used=50.0))
    assert choose_host("a", 900 * MIB, [one]) == Placement("one", ("c", "b"))


def test_never_evicts_a_busy_or_pinned_model() -> None:
    one = host("one", 1000, busy("b", 600), idle("c", 300, last_used=0.0, pinned=True))
    decision = choose_host("a", 500 * MIB, [one])
    assert isinstance(decision, NoFit)
    assert "b 600 MiB (busy)" in decision.message and "c 300 MiB (pinned)" in decision.message


def test_prefers_the_host_whose_victims_are_stalest() -> None:
    fresh = host("fresh", 1000, idle("b", 800, last_used=500.0))
    stale = host("stale", 1000, idle("c", 800, last_used=10.0))
    assert choose_host("a", 500 * MIB, [fresh, stale]) == Placement("stale", ("c",))


def test_no_fit_message_names_the_need_and_every_host() -> None:
    hosts = [host("one", 300), host("two", 1000, busy("b", 900)), host("three", 4000, models=("b",))]
    decision = choose_host("a", 500 * MIB, hosts, need_text="500 MiB (weights 400 MiB + KV 100 MiB)")
    assert isinstance(decision, NoFit) and decision.on_disk
    assert "model 'a' needs 500 MiB (weights 400 MiB + KV 100 MiB)" in decision.message
    assert "one: 300 MiB free of 300 MiB" in decision.message
    assert "two: 100 MiB free of 1000 MiB, holding b 900 MiB (busy)" in decision.message
    assert "three: does not have it on disk" in decision.message


def test_no_host_with_the_model_is_not_a_capacity_problem() -> None:
    decision = choose_host("a", MIB, [host("one", 1000, models=("b",))])
    assert isinstance(decision, NoFit) and not decision.on_disk


def test_a_host_running_the_model_is_skipped_for_another_replica() -> None:
    hosts = [host("one", 1000, busy("a", 300)), host("two", 500)]
    assert choose_host("a", 300 * MIB, hosts) == Placement("two")


def test_crashing_model_is_not_placed_where_it_crashes() -> None:
    bad = HostView("bad", 1000 * MIB, 1000 * MIB, frozenset({"a"}), crashing=frozenset({"a"}))
    decision = choose_host("a", 100 * MIB, [bad])
    assert isinstance(decision, NoFit) and "keeps crashing" in decision.message


def test_keep_alive() -> None:
    resident = idle("a", 100, last_used=1000.0)
    assert not keep_alive_expired(resident, 300, now=1200.0)
    assert keep_alive_expired(resident, 300, now=1300.0)
    assert not keep_alive_expired(resident, -1, now=10**9)
    assert not keep_alive_expired(idle("a", 100, last_used=0.0, pinned=True), 0, now=10.0)
    assert not keep_alive_expired(busy("a", 100), 0, now=10**9)


def test_memory_of_stopping_workers_is_waited_for_not_refused() -> None:
    leaving = Resident("b", 400 * MIB, rss=400 * MIB, busy=True, stopping=True)
    one = host("one", 1000, idle("c", 400, last_used=1.0), leaving)
    decision = choose_host("b", 700 * MIB, [one])
    assert isinstance(decision, NoFit) and "b 400 MiB (stopping)" in decision.message
    assert fits_once_settled("b", 700 * MIB, [one])
    assert not fits_once_settled("b", 5000 * MIB, [one])


MLX_MISSING = "mlx-lm is not installed (pip install 'hostler[mlx]')"


def test_a_host_that_cannot_run_the_engine_is_never_chosen() -> None:
    # The roomier host has the folder on disk but no mlx-lm: the model goes to the other one.
    no_mlx = HostView("big", 8000 * MIB, 8000 * MIB, frozenset({"m"}), unavailable={"m": MLX_MISSING})
    with_mlx = HostView("small", 500 * MIB, 500 * MIB, frozenset({"m"}))
    assert choose_host("m", 100 * MIB, [no_mlx, with_mlx], "most-free") == Placement("small")
    assert choose_host("m", 100 * MIB, [with_mlx, no_mlx], "best-fit") == Placement("small")


def test_a_model_no_host_can_run_fails_with_the_reason_instead_of_waiting() -> None:
    no_mlx = HostView("one", 8000 * MIB, 8000 * MIB, frozenset({"m", "a"}), unavailable={"m": MLX_MISSING})
    decision = choose_host("m", 100 * MIB, [no_mlx])
    # on_disk: the controller fails the waiting jobs (no_capacity) rather than letting them wait.
    assert isinstance(decision, NoFit) and decision.on_disk
    assert f"one: cannot run it ({MLX_MISSING})" in decision.message
    # Other models on that host are unaffected.
    assert choose_host("a", 100 * MIB, [no_mlx]) == Placement("one")


def test_evicting_never_makes_room_on_a_host_that_cannot_run_the_engine() -> None:
    full = HostView(
        "one", 1000 * MIB, 1000 * MIB, frozenset({"m", "a"}), (idle("a", 900, 1.0),), unavailable={"m": MLX_MISSING}
    )
    assert isinstance(choose_host("m", 500 * MIB, [full]), NoFit)
    assert not fits_once_settled("m", 500 * MIB, [full])
    stopping = HostView(
        "one",
        1000 * MIB,
        100 * MIB,
        frozenset({"m"}),
        (Resident("x", 900 * MIB, rss=900 * MIB, busy=True, stopping=True),),
        unavailable={"m": MLX_MISSING},
    )
    assert not fits_once_settled("m", 500 * MIB, [stopping])
