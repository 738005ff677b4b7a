"""The `hostler` command: the client commands (hostler.client.cli) plus the server half.

The server half is one module per concern: `up` (everything on one machine), `processes`
(worker, host, controller, janitor, clean-up), `gateway` (the HTTP API), `models` (pull,
import, rm, show), `hardware`; `options` holds what they share.
"""

from __future__ import annotations

import logging

import click
from hostler.client import ConnectionFailed, InvalidRequest
from hostler.client.cli import CLIENT_COMMANDS, models_group

from .gateway import gateway_command
from .hardware import hardware_command
from .models import MODEL_COMMANDS
from .processes import clean_up_command, controller_command, host_command, janitor_command, worker_command
from .up import up_command


class _Main(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        # Refused credentials (or a command the ACL refuses) and a malformed Redis URL end any
        # command with one line, not a traceback: retrying cannot fix them, the person running it can.
        try:
            return super().invoke(ctx)
        except (ConnectionFailed, InvalidRequest) as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def main(verbose: int) -> None:
    """hostler: local LLMs served to many clients through Redis queues.

    Example: hostler up        (then, in another terminal)  hostler complete smollm2-135m "Hello"
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(name)s %(levelname)s %(message)s")


for _command in CLIENT_COMMANDS:
    main.add_command(_command)
# The models group lives with the client commands (`models ls` reads Redis); the commands
# that change this machine's models directory are the server half's.
for _command in MODEL_COMMANDS:
    models_group.add_command(_command)
for _command in (
    up_command,
    worker_command,
    host_command,
    controller_command,
    janitor_command,
    clean_up_command,
    gateway_command,
    hardware_command,
):
    main.add_command(_command)
