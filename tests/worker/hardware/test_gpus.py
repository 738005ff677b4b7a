"""The GPU probe: NVML's answers become GpuInfo; no library, driver or GPU is never a crash."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
from hostler.worker.hardware import gpus


@dataclass
class _Memory:
    total: int
    free: int


def _fake_nvml(*, init_fails: bool = False) -> types.ModuleType:
    module = types.ModuleType("pynvml")

    def init() -> None:
        if init_fails:
            raise RuntimeError("NVML Shared Library Not Found")

    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    module.nvmlDeviceGetName = lambda h: b"NVIDIA H100" if h == 0 else "NVIDIA L4"  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda h: _Memory(80 * 2**30, (70 - h) * 2**30)  # type: ignore[attr-defined]
    return module


def test_without_nvidia_ml_py_there_are_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    assert gpus.probe() == []


def test_a_driver_that_fails_to_initialise_means_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(init_fails=True))
    assert gpus.probe() == []


def test_each_gpu_is_reported_with_its_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml())
    found = gpus.probe()
    assert [(g.index, g.name, g.total_bytes, g.free_bytes) for g in found] == [
        (0, "NVIDIA H100", 80 * 2**30, 70 * 2**30),
        (1, "NVIDIA L4", 80 * 2**30, 69 * 2**30),
    ]
