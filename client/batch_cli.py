"""`hostler batch`: OpenAI Batch API files run against the queue."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from ._async import AsyncClient
from ._cli_options import redis_option
from ._errors import HostlerError
from ._progress import Progress
from .batch import batch_status, read_done, run_batch
from .summarize import DEFAULT_INSTRUCTION, read_documents, summarize_documents


@click.group("batch", short_help="Run OpenAI Batch API files (JSONL) against the queue.")
def batch_group() -> None:
    """OpenAI Batch API input files, run against hostler's queue, resumable after a crash."""


@batch_group.command("run")
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output JSONL.")
@click.option("--errors", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Bad lines, with their numbers (default: OUTPUT with .errors.jsonl).")  # fmt: skip
@click.option("--model", default=None, help="Run every line on this model, whatever its body names.")
@click.option("--max-in-flight", type=click.IntRange(1, 100_000), default=64, show_default=True)
@click.option("--timeout", type=float, default=24 * 3600.0, show_default=True, help="Seconds to wait in all.")
@redis_option
def batch_run_command(
    input_path: Path,
    output: Path,
    errors: Path | None,
    model: str | None,
    max_in_flight: int,
    timeout: float,
    redis_url: str | None,
) -> None:
    """Run INPUT_PATH (lines of custom_id, method, url, body) and append results to OUTPUT.

    Run the same command again after an interruption: lines already in OUTPUT are skipped
    and jobs already queued or finished are picked up, never run twice.

    Example: hostler batch run requests.jsonl -o results.jsonl --model smollm2-135m
    """
    errors = errors if errors is not None else output.with_suffix(".errors.jsonl")

    async def main() -> None:
        async with AsyncClient(redis_url) as client:
            summary = await run_batch(
                client,
                input_path,
                output,
                errors=errors,
                model=model,
                max_in_flight=max_in_flight,
                timeout=timeout,
                progress=Progress(None, label="requests"),
            )
        for bad in summary.bad_lines:
            click.echo(f"line {bad.line}: {bad.message}", err=True)
        click.echo(summary.text())
        if summary.bad:
            click.echo(f"bad lines are listed in {errors}", err=True)

    try:
        asyncio.run(main())
    except HostlerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {output} holds whole lines; run the same command again to go on", err=True)
        sys.exit(130)


@batch_group.command("status")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@redis_option
def batch_status_command(batch_id: str, as_json: bool, redis_url: str | None) -> None:
    """Counts of a batch run's requests by state (the id is printed by `batch run`).

    Example: hostler batch status batch_3f2a9c0d1e4b5a6f7c8d
    """

    async def main() -> dict[str, object]:
        async with AsyncClient(redis_url) as client:
            return await batch_status(client, batch_id)

    state = asyncio.run(main())
    if not state:
        click.echo(f"error: no batch {batch_id!r} in this Redis (or it expired)", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    states = state["states"]
    assert isinstance(states, dict)
    click.echo(f"{batch_id}: {state['requests']} requests from {state['input']}")
    for name, count in sorted(states.items()):
        if count:
            click.echo(f"  {name:<14} {count}")


@click.command("summarize", short_help="Summarize text and markdown files of any length (map-reduce).")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", required=True, help="The model that summarizes.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output JSONL.")
@click.option("--context", type=click.IntRange(64, 1_048_576), default=None,
              help="The model's context in tokens (default: its load spec's n_ctx, else 2048).")  # fmt: skip
@click.option("--max-tokens", type=click.IntRange(8, 4096), default=128, show_default=True, help="Per summary.")
@click.option("--instruction", default=DEFAULT_INSTRUCTION, show_default=True, help="The system prompt.")
@click.option("--max-in-flight", type=click.IntRange(1, 10_000), default=16, show_default=True)
@redis_option
def summarize_command(
    paths: tuple[Path, ...],
    model: str,
    output: Path,
    context: int | None,
    max_tokens: int,
    instruction: str,
    max_in_flight: int,
    redis_url: str | None,
) -> None:
    """One summary per document in OUTPUT; documents longer than the context are split by
    token count, summarized in pieces, and the piece summaries summarized again.

    Run the same command again after an interruption: documents already in OUTPUT are
    skipped and finished pieces are not summarized twice.

    Example: hostler summarize notes/ report.md --model smollm2-135m -o summaries.jsonl
    """
    documents = read_documents(paths)
    done = read_done(output, key="id")
    todo = [d for d in documents if d.id not in done]

    async def main() -> tuple[int, int]:
        ok = failed = 0
        progress = Progress(len(todo), label="documents")
        async with AsyncClient(redis_url) as client:
            with output.open("a", encoding="utf-8") as out:
                summaries = summarize_documents(
                    client, model, todo, context=context, max_tokens=max_tokens, instruction=instruction,
                    max_in_flight=max_in_flight, progress=progress,
                )  # fmt: skip
                async for summary in summaries:
                    out.write(json.dumps(summary.record()) + "\n")
                    out.flush()
                    if summary.error is None:
                        ok += 1
                    else:
                        failed += 1
                        click.echo(f"\n{summary.id}: {summary.error}", err=True)
        progress.finish()
        return ok, failed

    try:
        ok, failed = asyncio.run(main())
    except (HostlerError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {output} holds whole lines; run the same command again to go on", err=True)
        sys.exit(130)
    click.echo(f"{ok} summarized, {failed} failed, {len(documents) - len(todo)} already done; written to {output}")
    if failed:
        sys.exit(1)
