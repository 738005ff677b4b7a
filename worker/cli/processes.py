"""The server's long-running processes, one command each: `worker` (one model's queue), `host`
(a machine's agent), `controller` (placement), `janitor` (jobs nobody will run or read), and
`clean-up`, the janitor's one-off for a model's old jobs."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click
from hostler.client._connection import connect, resolve_url
from hostler.client.cli import redis_option
from hostler.schemas import Keys, PlacementPolicy
from hostler.worker.models.registry import scan

from .options import (
    allow_dir_option,
    checked_model_id,
    checked_stream_interval,
    host_option,
    max_memory_option,
    max_queue_option,
    models_option,
    policy_option,
    prefix_option,
    run_until_signal,
)


@click.command("worker", short_help="Serve one model's queue (started by `hostler up`).")
@click.option("--model", "model_id", required=True, help="The model id to serve.")
@redis_option
@models_option
@allow_dir_option
@prefix_option
@host_option
@click.option("--idle-exit", type=float, default=None, help="Exit after this many idle seconds.")
@click.option("--preload", is_flag=True, help="Load the model at start instead of on the first job.")
@click.option("--exit-with-parent", is_flag=True, help="Finish the running job and exit when the parent process ends.")
def worker_command(
    model_id: str,
    redis_url: str | None,
    models_dir: Path,
    prefix: str,
    host_id: str | None,
    idle_exit: float | None,
    preload: bool,
    exit_with_parent: bool,
) -> None:
    """Load MODEL once and serve its queue in FIFO order until stopped.

    SIGTERM finishes the running job and exits; a second SIGTERM stops it now.

    Example: hostler worker --model smollm2-135m --models ~/models --redis redis://127.0.0.1:6379/0
    """
    from hostler.worker.engines.available import EngineUnavailable, engine_factory
    from hostler.worker.serving.worker import ModelWorker

    checked_model_id(model_id)
    stream_interval_s = checked_stream_interval()
    catalog = scan(models_dir)
    manifest = catalog.models.get(model_id)
    if manifest is None:
        raise click.UsageError(
            f"model {model_id!r} is not in {models_dir}; models there: {', '.join(sorted(catalog.models)) or 'none'}"
        )
    try:
        factory = engine_factory(manifest.engine)
    except EngineUnavailable as exc:
        raise click.UsageError(f"model {model_id!r}: {exc}") from None
    worker = ModelWorker(
        connection=connect(resolve_url(redis_url)),
        keys=Keys(prefix),
        manifest=manifest,
        engine_factory=factory,
        host=host_id,
        idle_exit_s=idle_exit,
        preload=preload,
        parent_pid=os.getppid() if exit_with_parent else None,
        stream_interval_s=stream_interval_s,
    )
    worker.install_signal_handlers()
    worker.run()


@click.command("host", short_help="Run this machine's host agent (workers for assigned models).")
@redis_option
@models_option
@allow_dir_option
@prefix_option
@host_option
@max_memory_option
def host_command(
    redis_url: str | None, models_dir: Path, prefix: str, host_id: str | None, max_memory: int | None
) -> None:
    """Heartbeat this machine's memory, GPUs and models, and run the workers the controller
    assigns to it. Start one per machine; `hostler controller` runs somewhere once.

    Example: hostler host --redis redis://10.0.0.5:6379/0 --models ~/models --max-memory 12GiB
    """
    from hostler.worker.control.host_agent import HostAgent

    checked_stream_interval()
    url = resolve_url(redis_url)
    agent = HostAgent(
        connection=connect(url),
        keys=Keys(prefix),
        redis_url=url,
        models_dir=models_dir,
        host=host_id or socket.gethostname(),
        max_memory=max_memory,
    )
    run_until_signal(agent.run, agent.stop)


@click.command("controller", short_help="Decide which host loads which model (run one or more).")
@redis_option
@prefix_option
@policy_option
@click.option("--autoscale", is_flag=True, help="Add a replica on another host while a queue stays long.")
@click.option("--scale-up-queue", type=int, default=8, show_default=True, help="Queue length that counts as long.")
@click.option("--scale-up-after", type=float, default=5.0, show_default=True, help="Seconds a queue stays long.")
@click.option("--scale-down-after", type=float, default=30.0, show_default=True, help="Seconds empty before removal.")
def controller_command(
    redis_url: str | None,
    prefix: str,
    policy: PlacementPolicy,
    autoscale: bool,
    scale_up_queue: int,
    scale_up_after: float,
    scale_down_after: float,
) -> None:
    """Place models on hosts by free memory. Several may run: one leads, the others take
    over within seconds when it dies.

    Example: hostler controller --redis redis://10.0.0.5:6379/0 --policy best-fit --autoscale
    """
    from hostler.worker.control.controller import Autoscale, Controller

    controller = Controller(
        connection=connect(resolve_url(redis_url)),
        keys=Keys(prefix),
        policy=policy,
        autoscale=Autoscale(scale_up_queue, scale_up_after, scale_down_after) if autoscale else None,
    )
    run_until_signal(controller.run, controller.stop)


@click.command("janitor", short_help="End jobs nobody waits for, and jobs of dead workers.")
@redis_option
@prefix_option
@max_queue_option
def janitor_command(redis_url: str | None, prefix: str, max_queue: int | None) -> None:
    """Cancel queued jobs whose client stopped waiting or whose start deadline passed, and
    fail (or retry) the jobs of workers whose heartbeat expired. Several may run.

    Example: hostler janitor --redis redis://10.0.0.5:6379/0 --max-queue 500
    """
    from hostler.worker.control.janitor import Janitor

    janitor = Janitor(connection=connect(resolve_url(redis_url)), keys=Keys(prefix), max_queue=max_queue)
    run_until_signal(janitor.run, janitor.stop)


@click.command("clean-up", short_help="Cancel a model's jobs that have waited too long.")
@redis_option
@prefix_option
@click.option("--model", "model", required=True, help="The model whose queue to clean.")
@click.option("--older-than", type=click.FloatRange(min=0), required=True, help="Seconds a job has waited.")
def clean_up_command(redis_url: str | None, prefix: str, model: str, older_than: float) -> None:
    """Cancel the jobs of --model that have waited longer than --older-than seconds; their
    clients get a canceled error.

    Example: hostler clean-up --model smollm2-135m --older-than 3600
    """
    from hostler.worker.control.janitor import clean_up

    checked_model_id(model)
    removed = clean_up(connect(resolve_url(redis_url)), Keys(prefix), model, older_than)
    click.echo(f"removed {removed} queued job(s) of {model} older than {older_than:g} s")
