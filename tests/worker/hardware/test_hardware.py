"""The hardware report: CPU facts parsed from the OS's own text, the probe and the CLI.

The report of a running host is test_hardware_e2e.py's.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
from click.testing import CliRunner
from hostler.schemas import GpuInfo, HardwareReport
from hostler.worker.cli.hardware import hardware_lines
from hostler.worker.cli.main import main
from hostler.worker.engines.available import engine_availability
from hostler.worker.hardware import cpu as hardware
from hostler.worker.hardware import gpus


def _x86_processor(index: int, physical: int, core: int, flags: str) -> str:
    return (
        f"processor\t: {index}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
        f"model name\t: Intel(R) Xeon(R) Platinum 8480+\nstepping\t: 8\nphysical id\t: {physical}\n"
        f"siblings\t: 4\ncore id\t\t: {core}\ncpu cores\t: 2\nflags\t\t: {flags}\n\n"
    )


SAPPHIRE_RAPIDS_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht "
    "syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe "
    "popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch fsgsbase bmi1 avx2 smep bmi2 erms "
    "avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt "
    "avx_vnni avx512_bf16 avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni "
    "avx512_bitalg avx512_vpopcntdq la57 rdpid movdiri movdir64b fsrm md_clear serialize tsxldtrk amx_bf16 "
    "avx512_fp16 amx_tile amx_int8 arch_capabilities"
)
# Two sockets, two cores each, two threads per core: 8 logical, 4 physical.
XEON_CPUINFO = "".join(
    _x86_processor(i, physical=i // 4, core=(i // 2) % 2, flags=SAPPHIRE_RAPIDS_FLAGS) for i in range(8)
)
OLD_X86_CPUINFO = "".join(
    _x86_processor(i, 0, i, "fpu sse sse2 pni ssse3 sse4_1 sse4_2 popcnt").replace(
        "Intel(R) Xeon(R) Platinum 8480+", "Intel(R) Core(TM)2 Duo CPU E8400"
    )
    for i in range(2)
)
GRAVITON3_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 2100.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
    "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm "
    "svebf16 i8mm bf16 dgh rng\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd40\nCPU revision\t: 1\n\n"
    for i in range(4)
)
M2_SYSCTL = """hw.ncpu: 8
hw.physicalcpu: 8
hw.logicalcpu: 8
hw.memsize: 17179869184
hw.optional.neon: 1
hw.optional.neon_fp16: 1
hw.optional.arm.FEAT_FP16: 1
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_I8MM: 1
hw.optional.arm.FEAT_SME: 0
hw.optional.avx2_0: 0
machdep.cpu.brand_string: Apple M2
"""
INTEL_MAC_SYSCTL = """hw.physicalcpu: 6
hw.logicalcpu: 12
hw.optional.sse3: 1
hw.optional.supplementalsse3: 1
hw.optional.avx1_0: 1
hw.optional.avx2_0: 1
hw.optional.avx512f: 0
machdep.cpu.brand_string: Intel(R) Core(TM) i7-8750H CPU @ 2.20GHz
machdep.cpu.features: FPU VME DE PSE TSC MSR PAE MCE SSE3 PCLMULQDQ SSSE3 FMA CX16 SSE4.1 SSE4.2 AVX1.0 RDRAND F16C
machdep.cpu.leaf7_features: RDWRFSGS TSC_THREAD_OFFSET SGX BMI1 AVX2 SMEP BMI2 ERMS INVPCID
"""


def test_x86_cpuinfo_gives_model_cores_and_llama_cpp_instruction_sets() -> None:
    facts = hardware.parse_cpuinfo(XEON_CPUINFO)
    assert facts.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert (facts.cores_physical, facts.cores_logical) == (4, 8)
    assert facts.instruction_sets == [
        "SSE3", "SSSE3", "AVX", "AVX_VNNI", "AVX2", "F16C", "FMA", "AVX512", "AVX512_BW", "AVX512_VL",
        "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8", "AMX_BF16",
    ]  # fmt: skip


def test_an_old_x86_cpu_has_no_avx() -> None:
    facts = hardware.parse_cpuinfo(OLD_X86_CPUINFO)
    assert facts.model == "Intel(R) Core(TM)2 Duo CPU E8400"
    assert facts.instruction_sets == ["SSE3", "SSSE3"]
    assert (facts.cores_physical, facts.cores_logical) == (2, 2)


def test_arm_linux_cpuinfo_reports_neon_and_its_extensions() -> None:
    facts = hardware.parse_cpuinfo(GRAVITON3_CPUINFO)
    assert facts.instruction_sets == ["NEON", "ARM_FMA", "FP16_VA", "DOTPROD", "MATMUL_INT8", "SVE"]
    assert facts.cores_logical == 4 and facts.cores_physical is None  # arm64 cpuinfo has no core ids
    assert "0x41" in facts.model and "0xd40" in facts.model


def test_macos_sysctl_on_apple_silicon_and_intel() -> None:
    apple = hardware.parse_sysctl(M2_SYSCTL)
    assert apple.model == "Apple M2" and (apple.cores_physical, apple.cores_logical) == (8, 8)
    assert apple.instruction_sets == ["NEON", "ARM_FMA", "FP16_VA", "DOTPROD", "MATMUL_INT8"]
    intel = hardware.parse_sysctl(INTEL_MAC_SYSCTL)
    assert (intel.cores_physical, intel.cores_logical) == (6, 12)
    assert intel.instruction_sets == ["SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA"]


def test_empty_or_garbled_text_is_an_unknown_cpu_not_a_crash() -> None:
    for text in ("", "no colon here\n\x00\xff", "flags\t: \n"):
        facts = hardware.parse_cpuinfo(text)
        assert facts.model == "unknown CPU" and facts.instruction_sets == []
    assert hardware.parse_sysctl("hw.logicalcpu: lots\n").cores_logical is None


def test_probe_of_this_machine_matches_what_the_os_says() -> None:
    report = hardware.probe(engine_availability())
    assert report.ram_total_bytes >= report.ram_available_bytes > 0
    assert report.cores_logical >= 1
    assert report.engines == engine_availability()
    if sys.platform == "linux":
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            text = handle.read()
        flags = set(text.split())
        assert ("AVX2" in report.instruction_sets) == ("avx2" in flags)
        assert ("NEON" in report.instruction_sets) == ("asimd" in flags)


class _Memory:
    total = 80 * 2**30
    free = 79 * 2**30


def test_gpus_carry_the_driver_version(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlSystemGetDriverVersion = lambda: b"550.54.15"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: 1  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetName = lambda h: "NVIDIA H100 80GB HBM3"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: _Memory()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert gpus.probe() == [GpuInfo(index=0, name="NVIDIA H100 80GB HBM3", total_bytes=_Memory.total,
                                    free_bytes=_Memory.free, driver="550.54.15")]  # fmt: skip
    report = hardware.probe(engine_availability())
    assert [g.driver for g in report.gpus] == ["550.54.15"]
    lines = "\n".join(hardware_lines(report))
    assert "NVIDIA H100 80GB HBM3, driver 550.54.15: 79.0 GiB free of 80.0 GiB" in lines


def test_hardware_command_prints_text_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no nvidia-ml-py: no GPUs, no crash
    text = CliRunner().invoke(main, ["hardware"])
    assert text.exit_code == 0, text.output
    assert "cpu" in text.output and "engine     llama:" in text.output and "gpus       none found" in text.output
    as_json = CliRunner().invoke(main, ["hardware", "--json"])
    report = HardwareReport.model_validate_json(as_json.output)
    assert report.gpus == [] and set(report.engines) >= {"llama", "mlx"}
    assert json.loads(as_json.output)["cores_logical"] == report.cores_logical


def test_summary_line_names_cpu_features_and_engines() -> None:
    report = HardwareReport(
        os="Linux", arch="x86_64", cpu_model="AMD EPYC 9654", cores_physical=96, cores_logical=192,
        instruction_sets=["AVX2", "AVX512"], ram_total_bytes=2**40, ram_available_bytes=2**39,
        engines={"llama": None, "mlx": "mlx is not installed"},
    )  # fmt: skip
    assert report.summary() == "AMD EPYC 9654, 96/192 cores, AVX2 AVX512; engines: llama (not mlx)"
