"""The gateway without a running one: its command documents itself, and nobody else imports its libraries."""

from __future__ import annotations

import subprocess
import sys


def test_the_client_and_the_cli_never_import_the_gateway_libraries() -> None:
    code = (
        "import sys, hostler, hostler.worker.cli.main; from hostler import Client, AsyncClient; "
        "loaded = {'fastapi', 'uvicorn', 'starlette', 'prometheus_client'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_gateway_command_documents_itself() -> None:
    from click.testing import CliRunner
    from hostler.worker.cli.main import main

    result = CliRunner().invoke(main, ["gateway", "--help"])
    assert result.exit_code == 0 and "Example: hostler gateway" in result.output
    assert "--api-key" in result.output and "HOSTLER_API_KEYS" in result.output and "--timeout" in result.output
