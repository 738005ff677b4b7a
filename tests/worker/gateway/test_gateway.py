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


def test_the_gateway_serves_on_uvloop_and_httptools() -> None:
    # Both come with the gateway extra; uvicorn falls back to asyncio and h11 silently without them.
    from hostler.worker.gateway.server import server_config
    from hostler.worker.gateway.settings import GatewaySettings

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("never called")

    config = server_config(app, GatewaySettings(redis_url="redis://127.0.0.1:1"), host="127.0.0.1", port=0)
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
    loop = config.get_loop_factory()()
    try:
        assert type(loop).__module__.startswith("uvloop"), type(loop)
    finally:
        loop.close()
