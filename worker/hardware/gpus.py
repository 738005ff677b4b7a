"""GPU memory through NVML (the `nvidia` extra); a host without one reports none."""

from __future__ import annotations

import logging
from typing import Any

from hostler.schemas import GpuInfo, as_text

log = logging.getLogger("hostler.gpus")


def probe() -> list[GpuInfo]:
    """Each NVIDIA GPU's name and total/free memory; [] without nvidia-ml-py, a driver or a GPU."""
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return []
    nvml: Any = pynvml
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError subclasses vary by driver; no GPU is not a crash
        log.debug("NVML unavailable: %s", exc)
        return []
    try:
        driver = _driver_version(nvml)
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=as_text(name),
                    total_bytes=int(memory.total),
                    free_bytes=int(memory.free),
                    driver=driver,
                )
            )
        return gpus
    except Exception as exc:  # noqa: BLE001 - a GPU that fails to answer is reported as absent
        log.warning("NVML query failed: %s", exc)
        return []
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _driver_version(nvml: Any) -> str | None:
    # Older nvidia-ml-py returns bytes; a driver that cannot say is no reason to hide its GPUs.
    try:
        version = nvml.nvmlSystemGetDriverVersion()
    except Exception:  # noqa: BLE001
        return None
    return as_text(version)
