"""`hostler hardware`: what this machine offers to models."""

from __future__ import annotations

import click
from hostler.schemas import HardwareReport, format_bytes


@click.command("hardware", short_help="Show CPU, instruction sets, RAM, GPUs and engines of this machine.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def hardware_command(as_json: bool) -> None:
    """Show this machine's CPU (model, cores, the instruction sets llama.cpp uses), RAM, GPUs
    (through nvidia-ml-py, when installed) and which engines it can run. Running hosts report
    the same to `hostler status`.

    Example: hostler hardware --json
    """
    from hostler.worker.engines.available import engine_availability
    from hostler.worker.hardware.cpu import probe

    report = probe(engine_availability())
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    for line in hardware_lines(report):
        click.echo(line)


def hardware_lines(report: HardwareReport) -> list[str]:
    cores = f"{report.cores_physical} physical, " if report.cores_physical else ""
    lines = [
        f"{'system':<10} {report.os} {report.arch}",
        f"{'cpu':<10} {report.cpu_model} ({cores}{report.cores_logical} logical cores)",
        f"{'features':<10} {' '.join(report.instruction_sets) or 'none of those llama.cpp uses'}",
        f"{'ram':<10} {format_bytes(report.ram_available_bytes)} available of {format_bytes(report.ram_total_bytes)}",
    ]
    if not report.gpus:
        lines.append(f"{'gpus':<10} none found (NVIDIA GPUs are read with nvidia-ml-py: pip install 'hostler[nvidia]')")
    for gpu in report.gpus:
        driver = f", driver {gpu.driver}" if gpu.driver else ""
        lines.append(
            f"{'gpu ' + str(gpu.index):<10} {gpu.name}{driver}: "
            f"{format_bytes(gpu.free_bytes)} free of {format_bytes(gpu.total_bytes)}"
        )
    for name, why in sorted(report.engines.items()):
        lines.append(f"{'engine':<10} {name}: {'yes' if why is None else 'no, ' + why}")
    return lines
