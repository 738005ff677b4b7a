"""What hostler adds to a models directory and may take out again.

`import_model` registers a GGUF file or an MLX folder where it lies: it makes
`<models>/<id>/` with a symbolic link to it and a model.yaml, and never copies or moves the
user's files. A pull (pull.py) writes the same kind of folder with the downloaded
files in it. Either way the model.yaml's `source` section records what hostler made (links,
downloaded files), and `remove_model` deletes exactly that: a linked file survives its model.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from hostler.worker.memory.files import GGUF_MAGIC, MLX_CONFIG, MLX_WEIGHTS, is_mlx_folder

from .registry import ModelIdError, check_model_id, clean_model_id, scan

__all__ = [
    "MANIFEST",
    "ModelStoreError",
    "Removed",
    "existing_entry",
    "import_model",
    "remove_model",
    "suggest_id",
]

MANIFEST = "model.yaml"
# The name of the link to an imported MLX folder inside the model's own folder.
MLX_LINK = "model"


class ModelStoreError(ValueError):
    """An import or removal that cannot be done; the message says why."""


@dataclass(frozen=True)
class Removed:
    model_id: str
    deleted: list[Path] = field(default_factory=list)  # files and links hostler made, now gone
    kept: list[Path] = field(default_factory=list)  # what was in the folder that hostler did not make


def suggest_id(name: str) -> str:
    """A model id made from a file or repo name: characters an id may not hold become '-'."""
    return clean_model_id(name)


def existing_entry(models_dir: Path, model_id: str) -> Path | None:
    """What already holds `model_id` in models_dir: a model with that id, or a file or folder of that name."""
    for candidate in (models_dir / model_id, models_dir / f"{model_id}.gguf"):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    manifest = scan(models_dir).models.get(model_id)
    return manifest.path if manifest is not None else None


def import_model(path: Path, models_dir: Path, model_id: str | None = None) -> Path:
    """Links a GGUF file or MLX folder into models_dir as a model; returns the model's folder."""
    if not path.exists():
        raise ModelStoreError(f"{path} does not exist")
    # The link points at the real file by absolute path, so it works from anywhere and
    # does not depend on a chain of the user's own links staying put.
    target = path.expanduser().resolve()
    engine = _engine_of(target)
    name = model_id if model_id is not None else suggest_id(target.stem if engine == "llama" else target.name)
    try:
        check_model_id(name)
    except ModelIdError as exc:
        raise ModelStoreError(f"{exc}; choose one with --id") from None
    if target.is_relative_to(models_dir.resolve()):
        raise ModelStoreError(f"{path} is inside the models directory {models_dir} already; it is listed as it is")
    taken = existing_entry(models_dir, name)
    if taken is not None:
        raise ModelStoreError(f"model id {name!r} is already used by {taken}; choose another with --id")
    models_dir.mkdir(parents=True, exist_ok=True)
    link = target.name if engine == "mlx" or target.suffix.lower() == ".gguf" else f"{name}.gguf"
    link = MLX_LINK if engine == "mlx" else link
    # Built under a hidden name and renamed: the registry never sees half an import.
    staging = models_dir / f".import-{name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        (staging / link).symlink_to(target, target_is_directory=engine == "mlx")
        data: dict[str, Any] = {"id": name, "engine": engine, "files": [link]}
        data["source"] = {"kind": "import", "path": str(target), "links": [link]}
        header = "# Written by `hostler models import`; `hostler models rm` removes the link, never the target.\n"
        (staging / MANIFEST).write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        folder = models_dir / name
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _engine_of(target: Path) -> str:
    if target.is_file():
        with target.open("rb") as handle:
            if handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC:
                return "llama"
        raise ModelStoreError(f"{target} is not a GGUF file (it does not start with the GGUF magic bytes)")
    if target.is_dir():
        # As the registry judges an MLX folder: what mlx-lm loads.
        if is_mlx_folder(target):
            return "mlx"
        raise ModelStoreError(f"{target} is a folder but not an MLX model: it needs {MLX_CONFIG} and {MLX_WEIGHTS}")
    raise ModelStoreError(f"{target} is neither a GGUF file nor an MLX folder")


def remove_model(models_dir: Path, model_id: str) -> Removed:
    """Deletes what hostler made for `model_id`: links, downloaded files, model.yaml, the folder.

    A file someone put into the models directory by hand, or a folder another tool wrote
    (Jan, cortex), is refused: hostler deletes only what its own records say it made.
    """
    check_model_id(model_id)
    catalog = scan(models_dir)
    manifest = catalog.models.get(model_id)
    if manifest is None or manifest.entry is None:
        known = ", ".join(sorted(catalog.models)) or "none"
        raise ModelStoreError(f"no model {model_id!r} in {models_dir}; models there: {known}")
    entry = manifest.entry
    if entry.is_symlink():
        entry.unlink()  # a link to a GGUF placed in the models directory: the link goes, its target stays
        return Removed(model_id, [entry])
    if entry.is_file():
        raise ModelStoreError(
            f"{entry} was put into the models directory by hand, not pulled or imported by hostler; delete it yourself"
        )
    source = _source(entry)
    if source is None:
        raise ModelStoreError(
            f"{entry} was not made by `hostler models pull` or `import` (its manifest records no source); "
            "hostler leaves it alone: delete it yourself"
        )
    removed = Removed(model_id)
    owned = source.get("links") or [] if source.get("kind") == "import" else source.get("files") or []
    for name in owned:
        path = _owned_path(entry, str(name))
        if source.get("kind") == "import" and not path.is_symlink():
            continue  # the link was replaced by something hostler did not make
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed.deleted.append(path)
    (entry / MANIFEST).unlink(missing_ok=True)
    removed.deleted.append(entry / MANIFEST)
    shutil.rmtree(entry / ".cache", ignore_errors=True)
    _prune_empty(entry)
    if entry.exists():
        removed.kept.extend(sorted(p for p in entry.rglob("*") if not p.is_dir()))
    return removed


def _source(folder: Path) -> dict[str, Any] | None:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    try:
        data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    source = data.get("source") if isinstance(data, dict) else None
    if isinstance(source, dict) and source.get("kind") in ("pull", "import"):
        return source
    return None


def _owned_path(folder: Path, name: str) -> Path:
    # A hand-edited manifest must not turn rm into a way to delete files elsewhere.
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise ModelStoreError(f"{folder / MANIFEST} lists {name!r}, which is not a path inside {folder}")
    return folder.joinpath(*parts)


def _prune_empty(folder: Path) -> None:
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass
