"""What this machine is made of: CPU model, cores, the instruction sets llama.cpp cares about,
RAM, GPUs, and which engines it can run (`hostler hardware`, the host report).

The parsers are pure functions of the text the OS gives (/proc/cpuinfo on Linux, `sysctl`
on macOS), so they are tested on samples from machines this one is not; only `probe` does I/O.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import dataclass, field

import psutil
from hostler.schemas import HardwareReport

from . import gpus

__all__ = ["CpuFacts", "instruction_sets", "parse_cpuinfo", "parse_sysctl", "probe", "probe_cpu"]

# Linux /proc/cpuinfo flag -> the name llama.cpp's system info prints, in its order.
_X86_FLAGS: tuple[tuple[str, str], ...] = (
    ("pni", "SSE3"),
    ("ssse3", "SSSE3"),
    ("avx", "AVX"),
    ("avx_vnni", "AVX_VNNI"),
    ("avx2", "AVX2"),
    ("f16c", "F16C"),
    ("fma", "FMA"),
    ("avx512f", "AVX512"),
    ("avx512bw", "AVX512_BW"),
    ("avx512vl", "AVX512_VL"),
    ("avx512vbmi", "AVX512_VBMI"),
    ("avx512_vnni", "AVX512_VNNI"),
    ("avx512_bf16", "AVX512_BF16"),
    ("amx_int8", "AMX_INT8"),
    ("amx_bf16", "AMX_BF16"),
)
# Linux arm64 "Features" -> llama.cpp's names. asimd is NEON; every arm64 NEON unit has fused multiply-add.
_ARM_FEATURES: tuple[tuple[str, str], ...] = (
    ("asimd", "NEON"),
    ("asimd", "ARM_FMA"),
    ("asimdhp", "FP16_VA"),
    ("asimddp", "DOTPROD"),
    ("i8mm", "MATMUL_INT8"),
    ("sve", "SVE"),
    ("sme", "SME"),
)
# macOS sysctl keys (value 1 when present) -> llama.cpp's names.
_SYSCTL_FLAGS: tuple[tuple[str, str], ...] = (
    ("hw.optional.sse3", "SSE3"),
    ("hw.optional.supplementalsse3", "SSSE3"),
    ("hw.optional.avx1_0", "AVX"),
    ("hw.optional.avx2_0", "AVX2"),
    ("hw.optional.fma", "FMA"),
    ("hw.optional.avx512f", "AVX512"),
    ("hw.optional.avx512bw", "AVX512_BW"),
    ("hw.optional.avx512vl", "AVX512_VL"),
    ("hw.optional.avx512vnni", "AVX512_VNNI"),
    ("hw.optional.neon", "NEON"),
    ("hw.optional.neon", "ARM_FMA"),
    ("hw.optional.arm.FEAT_FP16", "FP16_VA"),
    ("hw.optional.arm.FEAT_DotProd", "DOTPROD"),
    ("hw.optional.arm.FEAT_I8MM", "MATMUL_INT8"),
    ("hw.optional.arm.FEAT_SME", "SME"),
)
# Intel Macs list some features only as words in machdep.cpu.features / leaf7_features.
_SYSCTL_WORDS = {"F16C": "F16C", "FMA": "FMA", "AVX1.0": "AVX", "AVX2": "AVX2", "AVX512F": "AVX512"}
_ORDER = [name for _, name in (*_X86_FLAGS, *_ARM_FEATURES)]


@dataclass(frozen=True)
class CpuFacts:
    model: str
    cores_logical: int | None = None
    cores_physical: int | None = None
    instruction_sets: list[str] = field(default_factory=list)


def parse_cpuinfo(text: str) -> CpuFacts:
    """Reads Linux's /proc/cpuinfo (x86 and arm64 layouts)."""
    model = ""
    flags: set[str] = set()
    processors = 0
    cores: set[tuple[str, str]] = set()
    physical_id = ""
    implementer = part = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "processor":
            processors += 1
        elif key in ("model name", "cpu model", "hardware", "model") and not model and not value.isdigit():
            model = value
        elif key in ("flags", "features"):
            flags.update(value.lower().split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            cores.add((physical_id, value))
        elif key == "cpu implementer":
            implementer = value
        elif key == "cpu part":
            part = value
    if not model and implementer:
        model = f"ARM CPU (implementer {implementer}, part {part or '?'})"
    found = [name for flag, name in (*_X86_FLAGS, *_ARM_FEATURES) if flag in flags]
    return CpuFacts(
        model=model or "unknown CPU",
        cores_logical=processors or None,
        cores_physical=len(cores) or None,
        instruction_sets=_ordered(found),
    )


def parse_sysctl(text: str) -> CpuFacts:
    """Reads `sysctl hw machdep.cpu` output ("key: value" lines) from macOS."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    found = [name for key, name in _SYSCTL_FLAGS if values.get(key) == "1"]
    words = f"{values.get('machdep.cpu.features', '')} {values.get('machdep.cpu.leaf7_features', '')}".split()
    found += [name for word, name in _SYSCTL_WORDS.items() if word in words]
    return CpuFacts(
        model=values.get("machdep.cpu.brand_string") or "unknown CPU",
        cores_logical=_positive(values.get("hw.logicalcpu")),
        cores_physical=_positive(values.get("hw.physicalcpu")),
        instruction_sets=_ordered(found),
    )


def probe_cpu() -> CpuFacts:
    """This machine's CPU, from /proc/cpuinfo or sysctl; unknown fields stay empty, never an error."""
    facts = CpuFacts(model=platform.processor() or "unknown CPU")
    try:
        if platform.system() == "Darwin":
            out = subprocess.run(
                ["sysctl", "hw", "machdep.cpu"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
            facts = parse_sysctl(out)
        elif os.path.exists("/proc/cpuinfo"):
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                facts = parse_cpuinfo(handle.read())
    except (OSError, subprocess.SubprocessError):
        pass
    return facts


@functools.cache
def instruction_sets() -> frozenset[str]:
    """This machine's instruction sets under llama.cpp's names, probed once; empty when unknown."""
    return frozenset(probe_cpu().instruction_sets)


# HOSTLER_LLAMA_EXTRA_BUFFERS=1 (or 0) overrides the choice, for a llama.cpp build that fixed it.
EXTRA_BUFFERS_ENV = "HOSTLER_LLAMA_EXTRA_BUFFERS"


@functools.cache
def llama_extra_buffers_safe() -> bool:
    """Whether llama.cpp may put weights in extra buffer types here (see engines/llama_cpu.py:
    ggml's AMX matrix multiply crashes on AMX CPUs). The estimate and the engine both ask."""
    override = os.environ.get(EXTRA_BUFFERS_ENV)
    if override in ("0", "1"):
        return override == "1"
    return "AMX_INT8" not in instruction_sets()


def usable_cores() -> tuple[int, ...]:
    """The cores this process may run on (its affinity); every core where that cannot be read."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def pin_process(pid: int, cores: tuple[int, ...]) -> bool:
    """Restricts every thread of process `pid` to `cores` (threads it starts later inherit the
    mask from the thread that starts them); False where the OS has no affinity (macOS) or the
    process is gone."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]
    pinned = False
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cores)
            pinned = True
        except OSError:
            continue  # a thread that ended meanwhile
    return pinned


def probe(engines: dict[str, str | None]) -> HardwareReport:
    """The whole report: CPU, RAM, GPUs (through NVML), and the engines the caller found usable.

    engines comes from the caller (engines.available) so that hardware facts stay below the engines.
    """
    cpu = probe_cpu()
    memory = psutil.virtual_memory()
    logical = cpu.cores_logical or os.cpu_count() or 1
    physical = cpu.cores_physical or psutil.cpu_count(logical=False)
    return HardwareReport(
        os=platform.system(),
        arch=platform.machine(),
        cpu_model=cpu.model,
        cores_physical=physical,
        cores_logical=logical,
        instruction_sets=cpu.instruction_sets,
        ram_total_bytes=memory.total,
        ram_available_bytes=memory.available,
        gpus=gpus.probe(),
        engines=engines,
    )


def _ordered(names: list[str]) -> list[str]:
    unique = dict.fromkeys(names)
    return sorted(unique, key=lambda n: _ORDER.index(n) if n in _ORDER else len(_ORDER))


def _positive(value: str | None) -> int | None:
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if number > 0 else None
