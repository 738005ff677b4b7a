"""The options several server commands share: models directory, prefix, host id, memory,
policy, allowed directories, queue bound; and the small steps they share."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import click
from hostler.client._connection import PREFIX_ENV
from hostler.client._rqstore import DEFAULT_MAX_QUEUE
from hostler.schemas import DEFAULT_PREFIX, parse_size
from hostler.worker.models.registry import ALLOW_DIRS_ENV, DEFAULT_MODELS_DIR, ModelIdError, check_model_id

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


def checked_model_id(model_id: str, param_hint: str = "--model") -> str:
    """The model id, or a usage error naming the option that gave it."""
    try:
        return check_model_id(model_id)
    except ModelIdError as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from None


def checked_stream_interval() -> float:
    """HOSTLER_STREAM_INTERVAL_MS in seconds (workers inherit it from `up` and `host`), checked
    before anything starts."""
    from hostler.worker.serving.events import stream_interval_s

    try:
        return stream_interval_s()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def run_until_signal(run: Callable[[], None], stop: Callable[[], None]) -> None:
    """Runs a service loop until SIGINT or SIGTERM asks it to stop (it then finishes its step)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    run()
