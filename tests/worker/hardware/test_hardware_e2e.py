"""The hardware a running host agent reports, as `hostler status` shows it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import Stack
from hostler.worker.cli.main import main
from hostler.worker.engines.available import engine_availability
from hostler.worker.hardware import cpu as hardware

pytestmark = pytest.mark.e2e


def test_a_running_host_reports_its_hardware_to_status(stack: Stack) -> None:
    status = stack.client.status()
    [host] = status.hosts
    assert host.hardware is not None
    assert host.hardware.cpu_model == hardware.probe_cpu().model
    assert host.hardware.engines == engine_availability()
    assert host.hardware.ram_available_bytes == host.ram_available_bytes
    text = CliRunner(env={"HOSTLER_REDIS_URL": stack.url}).invoke(main, ["status"])
    assert text.exit_code == 0, text.output
    assert host.hardware.summary() in text.output
