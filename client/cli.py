"""The client half of the `hostler` command: talk to a running hostler through Redis."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from hostler.schemas import SamplingParams, format_bytes

from ._cli_options import redis_option, timeout_option
from ._client import Client
from ._core import DEFAULT_TIMEOUT_S
from ._errors import HostlerError
from .batch_cli import batch_group, summarize_command

# What a job gets for a sampling parameter left out; the options show the same defaults.
DEFAULTS = SamplingParams()


def _client(redis_url: str | None, timeout: float = DEFAULT_TIMEOUT_S) -> Client:
    return Client(redis_url, timeout=timeout)


def _fail(exc: HostlerError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@click.command("complete", short_help="Complete a prompt, streaming to the terminal.")
@click.argument("model")
@click.argument("prompt")
@click.option("--max-tokens", type=int, default=DEFAULTS.max_tokens, show_default=True)
@click.option("--temperature", type=float, default=DEFAULTS.temperature, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@redis_option
@timeout_option
def complete_command(
    model: str,
    prompt: str,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    stop: tuple[str, ...],
    redis_url: str | None,
    timeout: float,
) -> None:
    """Stream a completion of PROMPT by MODEL.

    Example: hostler complete smollm2-135m "Once upon a time" --max-tokens 32
    """
    try:
        with _client(redis_url, timeout) as client:
            for piece in client.stream(
                model, prompt, max_tokens=max_tokens, temperature=temperature, seed=seed, stop=list(stop)
            ):
                click.echo(piece, nl=False)
            click.echo()
    except HostlerError as exc:
        _fail(exc)


@click.command("chat", short_help="Chat with a model interactively.")
@click.argument("model")
@click.option("--system", default=None, help="A system message.")
@click.option("--max-tokens", type=int, default=DEFAULTS.max_tokens, show_default=True)
@click.option("--temperature", type=float, default=DEFAULTS.temperature, show_default=True)
@redis_option
@timeout_option
def chat_command(
    model: str, system: str | None, max_tokens: int, temperature: float, redis_url: str | None, timeout: float
) -> None:
    """Interactive chat with MODEL through its chat template; an empty line or Ctrl-D ends it.

    Example: hostler chat smollm2-135m --system "Answer briefly."
    """
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    try:
        with _client(redis_url, timeout) as client:
            while True:
                try:
                    line = input(">>> ")
                except EOFError:
                    break
                if not line.strip():
                    break
                history.append({"role": "user", "content": line})
                reply = []
                for piece in client.chat(model, history, stream=True, max_tokens=max_tokens, temperature=temperature):
                    reply.append(piece)
                    click.echo(piece, nl=False)
                click.echo()
                history.append({"role": "assistant", "content": "".join(reply)})
    except HostlerError as exc:
        _fail(exc)


@click.command("tokens", short_help="Count the tokens of a text.")
@click.argument("model")
@click.argument("text")
@redis_option
@timeout_option
def tokens_command(model: str, text: str, redis_url: str | None, timeout: float) -> None:
    """Print how many tokens MODEL makes of TEXT.

    Example: hostler tokens smollm2-135m "some text"
    """
    try:
        with _client(redis_url, timeout) as client:
            click.echo(client.count_tokens(model, text))
    except HostlerError as exc:
        _fail(exc)


@click.group("models", short_help="List the models on the hosts.")
def models_group() -> None:
    """Models known to the live hosts."""


@models_group.command("ls", short_help="List every model with engine, size, estimate and state.")
@redis_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_ls_command(redis_url: str | None, as_json: bool) -> None:
    """List every model on the disk of a live host, with the memory a load needs and the
    hosts that have room for it now.

    Example: hostler models ls --json
    """
    with _client(redis_url) as client:
        models = client.models()
    if as_json:
        click.echo(json.dumps([m.model_dump() for m in models], indent=2))
        return
    click.echo(f"{'MODEL':<28} {'ENGINE':<6} {'SIZE':>9} {'NEEDS':>9} {'HOST':<16} {'CHAT':<5} {'LOADED':<7} FITS ON")
    for m in models:
        needs = format_bytes(m.estimate_bytes) if m.estimate_bytes is not None else "?"
        # A host without the model's engine lists it, with the reason, but never runs it.
        fits = (", ".join(m.fits_on) or "-") if m.available else f"unavailable: {m.unavailable_reason}"
        click.echo(
            f"{m.id:<28} {m.engine:<6} {format_bytes(m.size_bytes):>9} {needs:>9} {m.host:<16} "
            f"{'yes' if m.chat_template else 'no':<5} {'yes' if m.loaded else 'no':<7} {fits}"
        )


@click.command("load", short_help="Load a model (replicas, keep_alive, pinning).")
@click.argument("model")
@click.option("--replicas", type=int, default=1, show_default=True, help="Workers to keep, each on its own host.")
@click.option("--keep-alive", default="5m", show_default=True, help="Idle time before unload (300, 5m, 1h; -1 never).")
@click.option("--pin", is_flag=True, help="Never evict it to make room for another model.")
@click.option("--n-ctx", type=int, default=None, help="Context length in tokens.")
@redis_option
@timeout_option
def load_command(
    model: str,
    replicas: int,
    keep_alive: str,
    pin: bool,
    n_ctx: int | None,
    redis_url: str | None,
    timeout: float,
) -> None:
    """Place MODEL on a host with room for it and load it.

    Example: hostler load gemma3-270m --replicas 2 --keep-alive -1 --n-ctx 8192
    """
    params: dict[str, Any] = {"n_ctx": n_ctx} if n_ctx is not None else {}
    try:
        with _client(redis_url, timeout) as client:
            result = client.load(model, replicas=replicas, keep_alive=keep_alive, pinned=pin, **params)
        click.echo(f"{model} loaded in {result.seconds:.1f}s" if result.reloaded else f"{model} was already loaded")
    except HostlerError as exc:
        _fail(exc)


@click.command("unload", short_help="Unload a model once its queued jobs have run.")
@click.argument("model")
@redis_option
@timeout_option
def unload_command(model: str, redis_url: str | None, timeout: float) -> None:
    """Unload MODEL after the jobs queued before this.

    Example: hostler unload gemma3-270m
    """
    try:
        with _client(redis_url, timeout) as client:
            result = client.unload(model)
        click.echo(f"{model} unloaded" if result.was_loaded else f"{model} was not loaded")
    except HostlerError as exc:
        _fail(exc)


@click.command("status", short_help="Show hosts, placements, workers and queues.")
@redis_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(redis_url: str | None, as_json: bool) -> None:
    """Show each host (free/total RAM and VRAM, models placed there and their memory), each
    worker (model, pid, state, cpu %, rss, current job) and each model's waiting jobs.

    Example: hostler status --json
    """
    with _client(redis_url) as client:
        status = client.status()
    if as_json:
        click.echo(status.model_dump_json(indent=2))
        return
    click.echo(f"controller: {status.controller or 'none running'}")
    click.echo(f"{'HOST':<20} {'FREE':>10} {'OFFERED':>10} {'RAM AVAIL':>10} {'RAM':>10}  PLACED")
    for h in status.hosts:
        offered = h.memory_limit_bytes if h.memory_limit_bytes is not None else h.ram_total_bytes
        placed = ", ".join(f"{m} {format_bytes(b)}" for m, b in sorted(h.placed.items())) or "-"
        click.echo(
            f"{h.host:<20} {format_bytes(h.free_bytes):>10} {format_bytes(offered):>10} "
            f"{format_bytes(h.ram_available_bytes):>10} {format_bytes(h.ram_total_bytes):>10}  {placed}"
        )
        if h.hardware is not None:
            click.echo(f"{'':<20} {h.hardware.summary()}")
        for gpu in h.gpus:
            driver = f" (driver {gpu.driver})" if gpu.driver else ""
            placeable = h.gpu_free_bytes.get(gpu.index, gpu.free_bytes)
            click.echo(f"{'':<20} GPU {gpu.index} {gpu.name}{driver}: {format_bytes(gpu.free_bytes)} free of "
                       f"{format_bytes(gpu.total_bytes)}, {format_bytes(placeable)} placeable")  # fmt: skip
        for model, why in sorted(h.crashing.items()):
            click.echo(f"{'':<20} crashing: {model}: {why}")
    if not status.workers:
        click.echo("no live workers")
    else:
        click.echo(f"\n{'MODEL':<24} {'HOST':<16} {'PID':>7} {'STATE':<8} {'CPU%':>6} {'RSS':>10} JOB")
        for r in status.workers:
            click.echo(
                f"{r.model:<24} {r.host:<16} {r.pid:>7} {r.state:<8} {r.cpu_percent:>6.1f} "
                f"{format_bytes(r.rss_bytes):>10} {r.current_job or '-'}"
            )
    waiting = {m: n for m, n in status.queues.items() if n}
    click.echo("\nqueues: " + (", ".join(f"{m} {n} waiting" for m, n in sorted(waiting.items())) or "all empty"))


__all__ = ["CLIENT_COMMANDS", "redis_option", "timeout_option"]

CLIENT_COMMANDS: list[Any] = [
    batch_group,
    complete_command,
    chat_command,
    tokens_command,
    models_group,
    load_command,
    unload_command,
    status_command,
    summarize_command,
]
