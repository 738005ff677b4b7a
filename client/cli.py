"""The client half of the `hostler` command: talk to a running hostler through Redis."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ._client import Client
from ._errors import HostlerError

redis_option = click.option(
    "--redis",
    "redis_url",
    envvar="HOSTLER_REDIS_URL",
    default=None,
    help="Redis URL (redis://, rediss://, with password). Default: $HOSTLER_REDIS_URL or localhost.",
)
timeout_option = click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait.")


def _client(redis_url: str | None, timeout: float = 600.0) -> Client:
    return Client(redis_url, timeout=timeout)


def _fail(exc: HostlerError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@click.command("complete", short_help="Complete a prompt, streaming to the terminal.")
@click.argument("model")
@click.argument("prompt")
@click.option("--max-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=0.8, show_default=True)
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
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
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


@models_group.command("ls", short_help="List every model with engine, size and state.")
@redis_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_ls_command(redis_url: str | None, as_json: bool) -> None:
    """List every model on the disk of a live host.

    Example: hostler models ls --json
    """
    with _client(redis_url) as client:
        models = client.models()
    if as_json:
        click.echo(json.dumps([m.model_dump() for m in models], indent=2))
        return
    click.echo(f"{'MODEL':<32} {'ENGINE':<6} {'SIZE':>10} {'HOST':<20} {'CHAT':<5} LOADED")
    for m in models:
        size = f"{m.size_bytes / 2**20:.1f} MiB"
        click.echo(
            f"{m.id:<32} {m.engine:<6} {size:>10} {m.host:<20} {'yes' if m.chat_template else 'no':<5} "
            f"{'yes' if m.loaded else 'no'}"
        )


@click.command("status", short_help="Show workers, their state and queues.")
@redis_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(redis_url: str | None, as_json: bool) -> None:
    """Show each worker: model, pid, state, cpu %, rss, queue length, current job.

    Example: hostler status --json
    """
    with _client(redis_url) as client:
        rows = client.status()
    if as_json:
        click.echo(json.dumps([r.model_dump() for r in rows], indent=2))
        return
    if not rows:
        click.echo("no live workers")
        return
    click.echo(f"{'MODEL':<24} {'PID':>7} {'STATE':<8} {'CPU%':>6} {'RSS':>10} {'QUEUE':>6} JOB")
    for r in rows:
        rss = f"{r.rss_bytes / 2**20:.0f} MiB"
        click.echo(
            f"{r.model:<24} {r.pid:>7} {r.state:<8} {r.cpu_percent:>6.1f} {rss:>10} {r.queue_length:>6} "
            f"{r.current_job or '-'}"
        )


CLIENT_COMMANDS: list[Any] = [complete_command, chat_command, tokens_command, models_group, status_command]
