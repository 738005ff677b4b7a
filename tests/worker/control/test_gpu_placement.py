"""Placement by VRAM: the pure policy with hosts that report GPUs."""

from __future__ import annotations

from hostler.worker.control.placement import (
    Demand,
    GpuView,
    HostView,
    NoFit,
    Placement,
    Resident,
    choose_host,
)

MIB = 1024**2
GIB = 1024 * MIB


def gpu(index: int, total_gib: float, free_gib: float) -> GpuView:
    return GpuView(index, int(total_gib * GIB), int(free_gib * GIB))


def host(name: str, *gpus: GpuView, residents: tuple[Resident, ...] = (), ram_gib: int = 64) -> HostView:
    return HostView(name, ram_gib * GIB, ram_gib * GIB, frozenset({"a", "b", "c"}), residents, gpus=gpus)


def on_gpu(model: str, index: int, vram_gib: float, *, loaded: bool = True, busy: bool = False) -> Resident:
    return Resident(
        model, 1 * GIB, rss=GIB if loaded else 0, busy=busy, last_used=1.0, gpu=index, vram=int(vram_gib * GIB),
        loaded=loaded,
    )  # fmt: skip


OFFLOAD = Demand(ram=2 * GIB, vram=10 * GIB, ram_without_gpu=12 * GIB)


def test_a_gpu_with_room_is_chosen_and_named() -> None:
    hosts = [host("small", gpu(0, 8, 8)), host("big", gpu(0, 24, 20))]
    assert choose_host("a", OFFLOAD, hosts) == Placement("big", gpu=0)


def test_one_gpu_must_hold_the_whole_offload_never_a_split_across_two() -> None:
    # 6 + 6 GiB free would hold 10 GiB split, but a worker is pinned to one GPU.
    two = host("two", gpu(0, 8, 6), gpu(1, 8, 6))
    found = choose_host("a", OFFLOAD, [two])
    assert isinstance(found, NoFit)
    assert "GPU 0: 6.0 GiB free of 8.0 GiB" in found.message and "GPU 1: 6.0 GiB free of 8.0 GiB" in found.message


def test_most_free_takes_the_emptiest_gpu_best_fit_the_tightest() -> None:
    box = host("box", gpu(0, 24, 11), gpu(1, 24, 20), gpu(2, 24, 16))
    assert choose_host("a", OFFLOAD, [box], "most-free") == Placement("box", gpu=1)
    assert choose_host("a", OFFLOAD, [box], "best-fit") == Placement("box", gpu=0)


def test_reservations_of_workers_not_yet_loaded_count_against_the_gpu() -> None:
    # NVML still says 16 GiB free, but 8 GiB are promised to a worker that is loading.
    loading = on_gpu("b", 0, 8, loaded=False, busy=True)
    box = host("box", gpu(0, 24, 16), residents=(loading,))
    assert box.gpu_free(box.gpus[0]) == 8 * GIB
    assert isinstance(choose_host("a", OFFLOAD, [box]), NoFit)
    # Once it has loaded, NVML's figure already lacks it: not counted twice.
    loaded = on_gpu("b", 0, 8, loaded=True, busy=True)
    box = host("box", gpu(0, 24, 16), residents=(loaded,))
    assert box.gpu_free(box.gpus[0]) == 16 * GIB
    assert choose_host("a", OFFLOAD, [box]) == Placement("box", gpu=0)


def test_the_gpu_total_bounds_reservations_even_when_nvml_reports_more_free() -> None:
    held = on_gpu("b", 0, 20, loaded=True)
    box = host("box", gpu(0, 24, 23), residents=(held,))  # a stale NVML figure
    assert box.gpu_free(box.gpus[0]) == 4 * GIB


def test_full_offload_on_a_host_without_enough_vram_is_no_capacity_with_the_numbers() -> None:
    found = choose_host("a", OFFLOAD, [host("gpu", gpu(0, 8, 7))], need_text="2 GiB of RAM + 10 GiB on one GPU")
    assert isinstance(found, NoFit) and found.on_disk
    assert found.message.startswith("model 'a' needs 2 GiB of RAM + 10 GiB on one GPU; no host can fit it:")
    assert "gpu: 64.0 GiB free of 64.0 GiB; GPU 0: 7.0 GiB free of 8.0 GiB" in found.message


def test_a_host_without_gpus_holds_every_layer_in_ram() -> None:
    cpu_only = HostView("cpu", 16 * GIB, 16 * GIB, frozenset({"a"}))
    assert choose_host("a", OFFLOAD, [cpu_only]) == Placement("cpu")
    tight = HostView("cpu", 8 * GIB, 8 * GIB, frozenset({"a"}))
    found = choose_host("a", OFFLOAD, [tight])
    assert isinstance(found, NoFit) and found.message.startswith(
        "model 'a' needs 2.0 GiB of RAM + 10.0 GiB on one GPU;"
    )
    assert isinstance(
        found, NoFit
    ) and "cpu: 8.0 GiB free of 8.0 GiB (no GPU: it would need 12.0 GiB of RAM there)" in (found.message)


def test_ram_is_still_checked_on_a_gpu_host() -> None:
    box = host("box", gpu(0, 24, 24), ram_gib=1)
    assert isinstance(choose_host("a", OFFLOAD, [box]), NoFit)


def test_a_model_that_offloads_nothing_ignores_gpus() -> None:
    box = host("box", gpu(0, 8, 0))
    assert choose_host("a", Demand(ram=GIB), [box]) == Placement("box")
    assert choose_host("a", GIB, [box]) == Placement("box")


def test_evicting_an_idle_model_frees_its_gpu() -> None:
    idle = on_gpu("b", 0, 16, loaded=True)
    box = host("box", gpu(0, 24, 8), residents=(idle,))
    assert choose_host("a", OFFLOAD, [box]) == Placement("box", ("b",), gpu=0)


def test_a_busy_model_on_the_gpu_is_never_evicted() -> None:
    busy = on_gpu("b", 0, 16, loaded=True, busy=True)
    box = host("box", gpu(0, 24, 8), residents=(busy,))
    assert isinstance(choose_host("a", OFFLOAD, [box]), NoFit)


def test_evicting_from_another_gpu_does_not_help() -> None:
    idle = on_gpu("b", 1, 16, loaded=True)
    box = host("box", gpu(0, 24, 8), gpu(1, 24, 8), residents=(idle,))
    # Evicting b frees GPU 1: the worker goes there.
    assert choose_host("a", OFFLOAD, [box]) == Placement("box", ("b",), gpu=1)
