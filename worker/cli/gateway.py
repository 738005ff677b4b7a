"""`hostler gateway`: the OpenAI-compatible HTTP API, one more client of the queues.

FastAPI, uvicorn and prometheus-client (the `gateway` extra) are imported only when the
command runs, never by `import hostler` or the rest of the CLI."""

from __future__ import annotations

import logging

import click
import redis
from hostler.client import Client
from hostler.client._connection import resolve_url
from hostler.client.cli import redis_option

from .options import prefix_option


@click.command("gateway", short_help="Serve the OpenAI-compatible HTTP API (needs the gateway extra).")
@redis_option
@prefix_option
@click.option("--host", "bind_host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    help="A key clients must send as 'Authorization: Bearer KEY' (repeatable; also $HOSTLER_API_KEYS, "
    "comma-separated, which keeps keys out of the process list).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1, max=86_400),
    default=600.0,
    show_default=True,
    help="Longest a request may take, queue wait included; past it: 504, and its job leaves the queue.",
)
@click.option("--max-file-bytes", type=click.IntRange(1024, 512 * 1024 * 1024), default=64 * 1024 * 1024,
              show_default=True, help="Batch API: largest uploaded file (files are kept in Redis).")  # fmt: skip
@click.option("--max-files", type=click.IntRange(1), default=1000, show_default=True,
              help="Batch API: most uploaded files kept at once.")  # fmt: skip
@click.option("--max-stored-bytes", type=click.IntRange(1024), default=1024**3, show_default=True,
              help="Batch API: most bytes all uploaded files hold together.")  # fmt: skip
@click.option("--max-batch-lines", type=click.IntRange(1), default=50_000, show_default=True,
              help="Batch API: most requests in one batch.")  # fmt: skip
@click.option("--batch-in-flight", type=click.IntRange(1, 10_000), default=64, show_default=True,
              help="Batch API: jobs of one batch queued or running at once.")  # fmt: skip
@click.pass_context
def gateway_command(
    ctx: click.Context,
    redis_url: str | None,
    prefix: str,
    bind_host: str,
    port: int,
    api_keys: tuple[str, ...],
    timeout: float,
    max_file_bytes: int,
    max_files: int,
    max_stored_bytes: int,
    max_batch_lines: int,
    batch_in_flight: int,
) -> None:
    """Serve /v1/chat/completions, /v1/completions, /v1/models, /metrics and more over HTTP,
    as one more client of the queues. Run as many as you like in front of one Redis.

    Example: hostler gateway --redis redis://10.0.0.5:6379/0 --host 0.0.0.0  (keys: HOSTLER_API_KEYS=k1,k2)
    """
    import importlib.util

    needed = ("fastapi", "uvicorn", "prometheus_client", "python_multipart")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise click.UsageError(f"the gateway needs {', '.join(missing)}: pip install 'hostler[gateway]'")
    from hostler.worker.gateway.server import serve
    from hostler.worker.gateway.settings import GatewaySettings, api_keys_from

    settings = GatewaySettings(
        redis_url=resolve_url(redis_url),
        prefix=prefix,
        api_keys=api_keys_from(api_keys),
        timeout_s=timeout,
        max_file_bytes=max_file_bytes,
        max_files=max_files,
        max_stored_bytes=max_stored_bytes,
        max_batch_lines=max_batch_lines,
        batch_in_flight=batch_in_flight,
    )
    _check_access(settings.redis_url, prefix)
    verbosity = ctx.find_root().params.get("verbose", 0)
    serve(settings, host=bind_host, port=port, log_level="debug" if verbosity >= 2 else "info")


def _check_access(redis_url: str, prefix: str) -> None:
    """Reads once what /management/processes reads, so refused credentials end the gateway
    at its start (ConnectionFailed) instead of failing every request it would accept."""
    try:
        with Client(redis_url, prefix=prefix, timeout=10) as client:
            client.status()
    except redis.RedisError as exc:
        # An outage is not a refusal: the gateway answers 503 until Redis is back.
        logging.getLogger("hostler.gateway").warning("redis unavailable at start (%s)", exc)
