"""`hostler models pull | import | rm | show`: manage the models directory of this machine.

These commands work on the local models directory (`--models`, $HOSTLER_MODELS); `rm` and
`show` also ask Redis (when reachable) whether a model is loaded and which hosts have it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import redis
from hostler.client import Client, HostlerError
from hostler.client.cli import redis_option
from hostler.schemas import format_bytes
from hostler.worker.models.details import details
from hostler.worker.models.registry import ModelIdError, check_model_id, scan
from hostler.worker.models.store import ModelStoreError, import_model, remove_model

from .options import models_option
from .progress import ProgressPrinter

UNLOAD_WAIT_S = 60.0


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.command("pull", short_help="Download a model from the Hugging Face hub.")
@click.argument("repo")
@click.option("--file", "file_name", default=None, help="The GGUF file to fetch (its name in the repo).")
@click.option("--quant", default=None, help="Pick the GGUF whose name holds this quantization, e.g. Q4_K_M.")
@click.option("--revision", default="main", show_default=True, help="Branch, tag or commit.")
@click.option("--id", "model_id", default=None, help="The model id (default: the GGUF's stem or the repo's name).")
@models_option
def pull_command(
    repo: str, file_name: str | None, quant: str | None, revision: str, model_id: str | None, models_dir: Path
) -> None:
    """Download REPO (OWNER/NAME) from the Hugging Face hub into the models directory.

    A GGUF repo gives one GGUF file (--file, --quant, or its only one); a repo with
    config.json and *.safetensors is fetched as an MLX folder. An interrupted pull continues
    where it stopped when run again. HF_ENDPOINT and HF_TOKEN are honoured.

    Example: hostler models pull bartowski/SmolLM2-135M-Instruct-GGUF --quant Q4_K_M
    """
    from hostler.worker.models.pull import PullError, plan_pull, pull

    try:
        plan = plan_pull(repo, file=file_name, quant=quant, revision=revision, model_id=model_id)
        size = format_bytes(plan.total_bytes) if plan.total_bytes is not None else "unknown size"
        click.echo(f"{plan.repo}@{plan.commit[:12]}: {len(plan.files)} file(s), {size} -> {plan.model_id}")
        with ProgressPrinter() as printer:
            pulled = pull(plan, models_dir, progress=printer)
    except (PullError, ModelStoreError) as exc:
        _fail(str(exc))
        return
    if pulled.already:
        click.echo(f"{pulled.model_id} is already here ({pulled.folder}); nothing to download")
        return
    click.echo(f"pulled {pulled.model_id} ({format_bytes(pulled.size_bytes)}) into {pulled.folder}")


@click.command("import", short_help="Register a GGUF file or MLX folder by link.")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--id", "model_id", default=None, help="The model id (default: the file's stem or folder's name).")
@models_option
def import_command(path: Path, model_id: str | None, models_dir: Path) -> None:
    """Register PATH (a .gguf file or an MLX folder) as a model without copying or moving it:
    the models directory gets a folder with a link to it and a model.yaml.

    Example: hostler models import ~/Downloads/qwen2.5-0.5b-instruct-q4_k_m.gguf --id qwen-0.5b
    """
    try:
        folder = import_model(path, models_dir, model_id)
    except (ModelStoreError, OSError) as exc:
        _fail(str(exc))
        return
    manifest = scan(models_dir).models.get(folder.name)
    engine = manifest.engine if manifest is not None else "?"
    click.echo(f"imported {folder.name} ({engine}) -> {path.expanduser().resolve()}")


@click.command("rm", short_help="Remove a pulled or imported model.")
@click.argument("model_id")
@click.option("--force", is_flag=True, help="Unload it first if it is loaded.")
@models_option
@redis_option
def rm_command(model_id: str, force: bool, models_dir: Path, redis_url: str | None) -> None:
    """Remove MODEL_ID: its links, the files a pull downloaded, its model.yaml. A file an
    import linked to is never deleted. A loaded model is refused unless --force unloads it.

    Example: hostler models rm SmolLM2-135M-Instruct-Q4_K_M --force
    """
    try:
        check_model_id(model_id)
    except ModelIdError as exc:
        _fail(str(exc))
    if model_id not in scan(models_dir).models:
        known = ", ".join(sorted(scan(models_dir).models)) or "none"
        _fail(f"no model {model_id!r} in {models_dir}; models there: {known}")
    where = _loaded_where(redis_url, model_id)
    if where:
        if not force:
            _fail(f"{model_id} is loaded on {', '.join(where)}; unload it first or pass --force")
        _unload(redis_url, model_id)
    try:
        removed = remove_model(models_dir, model_id)
    except (ModelStoreError, OSError) as exc:
        _fail(str(exc))
        return
    click.echo(f"removed {model_id}: {len(removed.deleted)} file(s) and link(s) deleted")
    if removed.kept:
        click.echo(f"kept what hostler did not make: {', '.join(map(str, removed.kept))}")


@click.command("show", short_help="Show one model: engine, files, context, memory, hosts.")
@click.argument("model_id")
@models_option
@redis_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_command(model_id: str, models_dir: Path, redis_url: str | None, as_json: bool) -> None:
    """Show MODEL_ID: engine, files and sizes, context length, whether it has a chat template,
    the memory a load takes, where it came from, and which hosts have it (from Redis).

    Example: hostler models show smollm2-135m --json
    """
    try:
        check_model_id(model_id)
    except ModelIdError as exc:
        _fail(str(exc))
    hosts, loaded_on, redis_error = _hosts_with(redis_url, model_id)
    catalog = scan(models_dir)
    manifest = catalog.models.get(model_id)
    if manifest is None and not hosts:
        known = ", ".join(sorted(catalog.models)) or "none"
        _fail(f"no model {model_id!r} in {models_dir} nor on any live host; models here: {known}")
    data: dict[str, Any] = details(manifest).as_dict() if manifest is not None else {"id": model_id, "local": False}
    data["hosts"] = hosts
    data["loaded_on"] = loaded_on
    if redis_error:
        data["redis_error"] = redis_error
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for line in _show_lines(data):
        click.echo(line)


def _show_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"{'model':<15} {data['id']}"]
    if data.get("local", True):
        lines.append(f"{'engine':<15} {data['engine']}")
        lines.append(f"{'path':<15} {data['path']}")
        for item in data["files"]:
            lines.append(f"{'file':<15} {item['name']} ({format_bytes(item['size_bytes'])})")
        lines.append(f"{'size':<15} {format_bytes(data['size_bytes'])}")
        ctx = data.get("context_length")
        lines.append(f"{'context':<15} {ctx if ctx is not None else '?'} trained, loads with n_ctx {data['n_ctx']}")
        lines.append(f"{'chat template':<15} {'yes' if data['chat_template'] else 'no'}")
        memory = data.get("memory") or data.get("memory_error") or "?"
        lines.append(f"{'memory':<15} {memory}")
        lines.append(f"{'source':<15} {data['source']}")
    else:
        lines.append(f"{'local':<15} not in this models directory")
    if "redis_error" in data:
        lines.append(f"{'hosts':<15} unknown ({data['redis_error']})")
    else:
        lines.append(f"{'hosts':<15} {', '.join(data['hosts']) or 'none live'}")
        lines.append(f"{'loaded on':<15} {', '.join(data['loaded_on']) or 'nowhere'}")
    return lines


def _hosts_with(redis_url: str | None, model_id: str) -> tuple[list[str], list[str], str | None]:
    """Live hosts that have the model on disk, hosts where it is loaded, or why Redis could not say."""
    try:
        with Client(redis_url, timeout=10) as client:
            infos = [m for m in client.models() if m.id == model_id]
    except (redis.RedisError, HostlerError, OSError) as exc:
        return [], [], f"Redis not reachable: {exc}"
    return sorted({m.host for m in infos}), sorted({m.host for m in infos if m.loaded}), None


def _loaded_where(redis_url: str | None, model_id: str) -> list[str]:
    """Hosts with a live worker of the model or an assignment of it; [] when Redis cannot be reached."""
    try:
        with Client(redis_url, timeout=10) as client:
            status = client.status()
    except (redis.RedisError, HostlerError, OSError) as exc:
        # Nothing can be loaded through a Redis nobody reaches; a worker that still maps the
        # file keeps its pages after the file is deleted, so removing is safe either way.
        click.echo(f"warning: cannot ask Redis whether {model_id} is loaded ({exc}); removing it", err=True)
        return []
    hosts = {w.host for w in status.workers if w.model == model_id}
    hosts |= {p.host for p in status.placements if p.model == model_id}
    return sorted(hosts)


def _unload(redis_url: str | None, model_id: str) -> None:
    click.echo(f"unloading {model_id} ...")
    deadline = time.monotonic() + UNLOAD_WAIT_S
    try:
        with Client(redis_url, timeout=UNLOAD_WAIT_S) as client:
            # Each unload job stops one worker; replicas on several hosts need one each.
            while _loaded_where(redis_url, model_id):
                if time.monotonic() > deadline:
                    _fail(f"{model_id} is still loaded after {UNLOAD_WAIT_S:.0f} s; nothing was removed")
                client.unload(model_id, timeout=max(1.0, deadline - time.monotonic()))
                time.sleep(0.2)
    except HostlerError as exc:
        _fail(f"could not unload {model_id}: {exc}; nothing was removed")


MODEL_COMMANDS = [pull_command, import_command, rm_command, show_command]
