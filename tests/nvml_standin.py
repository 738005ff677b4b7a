"""A stand-in for nvidia-ml-py's `pynvml` in another process (a host agent), for tests of
placement by VRAM on machines without a GPU.

`install` writes a `pynvml.py` into a folder and returns the environment that puts it first on
the child's path; it answers NVML's calls from a JSON file of GPUs the test may rewrite (free
memory moving as workers load). Only hostler's NVML probe is exercised with it: llama.cpp's
own build (CPU) never sees these GPUs and runs every layer on the CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["install", "write_gpus"]

_MODULE = """
import json, os
from types import SimpleNamespace

def _gpus():
    with open(os.environ["HOSTLER_TEST_NVML_GPUS"]) as handle:
        return json.load(handle)

def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlSystemGetDriverVersion(): return b"550.54.15"
def nvmlDeviceGetCount(): return len(_gpus())
def nvmlDeviceGetHandleByIndex(index): return index
def nvmlDeviceGetName(handle): return _gpus()[handle]["name"].encode()
def nvmlDeviceGetMemoryInfo(handle):
    gpu = _gpus()[handle]
    return SimpleNamespace(total=gpu["total"], free=gpu["free"], used=gpu["total"] - gpu["free"])
"""


def write_gpus(path: Path, gpus: list[tuple[int, int]]) -> None:
    """GPUs as (total bytes, free bytes), indexed in order."""
    records = [{"name": f"Stand-in GPU {i}", "total": total, "free": free} for i, (total, free) in enumerate(gpus)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    tmp.replace(path)


def install(folder: Path, gpus: list[tuple[int, int]]) -> dict[str, str]:
    """Writes the stand-in module and its GPUs; returns the environment a child needs to use it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pynvml.py").write_text(_MODULE)
    write_gpus(folder / "gpus.json", gpus)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "HOSTLER_TEST_NVML_GPUS": str(folder / "gpus.json")}
