"""Models on disk: which files and folders in a models directory are models, and their ids.

A model is a `.gguf` file (id: the file's stem), a folder with a `model.yaml`
(id, engine, file, chat template, load defaults), or an MLX folder (config.json and
model*.safetensors, as mlx-lm names its weights). Ids are names, never paths.
Jan's model.json and cortex.cpp's model.yml folders are read too (formats.py),
also nested a few levels deep as cortex keeps them (cortex.so/<model>/<variant>/).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import yaml
from hostler.schemas import MODEL_ID_PATTERN, LoadParams, ModelInfo, field_errors
from hostler.worker.memory.files import GGUF_MAGIC, is_mlx_folder
from pydantic import ValidationError

from .formats import MANIFEST_NAMES, read_manifest

Engine = Literal["llama", "mlx"]
# How deep below the models directory folders of model folders are looked into.
MAX_DEPTH = 3
ALLOW_DIRS_ENV = "HOSTLER_ALLOW_DIRS"
DEFAULT_MODELS_DIR = Path(os.path.expanduser("~/.hostler/models"))
_ID_RE = re.compile(MODEL_ID_PATTERN)


@dataclass(frozen=True)
class ModelManifest:
    id: str
    engine: Engine
    path: Path
    size_bytes: int
    chat_template: str | None = None
    has_chat_template: bool = False
    load: LoadParams = field(default_factory=LoadParams)
    # The file, link or folder in the models directory the model was read from (set by scan).
    entry: Path | None = None

    def info(self, host: str) -> ModelInfo:
        return ModelInfo(
            id=self.id,
            engine=self.engine,
            path=str(self.path),
            size_bytes=self.size_bytes,
            host=host,
            chat_template=self.has_chat_template,
        )


@dataclass
class Catalog:
    models: dict[str, ModelManifest]
    problems: list[str]


class ModelIdError(ValueError):
    pass


def check_model_id(model_id: str) -> str:
    if not _ID_RE.match(model_id):
        raise ModelIdError(f"invalid model id {model_id!r}: use letters, digits, '.', '_' and '-' (no paths, no '..')")
    if ".." in model_id:
        raise ModelIdError(f"invalid model id {model_id!r}: '..' is not allowed")
    return model_id


def clean_model_id(name: str) -> str:
    """`name` with the characters a model id may not hold turned into '-' (for ids other tools chose)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")
    return re.sub(r"\.{2,}", ".", cleaned)[:128]


def allowed_dirs(value: str | None = None) -> tuple[Path, ...]:
    """The directories an operator allow-listed (os.pathsep-separated, from $HOSTLER_ALLOW_DIRS)."""
    raw = os.environ.get(ALLOW_DIRS_ENV, "") if value is None else value
    return tuple(Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p)


def scan(models_dir: Path, allow_dirs: Sequence[Path] | None = None) -> Catalog:
    """Reads a models directory; a bad entry becomes a problem line, never an exception.

    A model.yaml names files inside its own folder, or, by absolute path, files under a
    directory the operator allow-listed (allow_dirs, default $HOSTLER_ALLOW_DIRS).
    """
    allow = tuple(allow_dirs) if allow_dirs is not None else allowed_dirs()
    models: dict[str, ModelManifest] = {}
    problems: list[str] = []
    if not models_dir.is_dir():
        return Catalog(models, [f"models directory {models_dir} does not exist"])
    for entry in sorted(models_dir.iterdir()):
        _scan_entry(entry, entry.name, 0, allow, Catalog(models, problems))
    return Catalog(models, problems)


def _scan_entry(entry: Path, label: str, depth: int, allow: tuple[Path, ...], catalog: Catalog) -> None:
    if entry.name.startswith("."):
        return
    try:
        manifest = _read_entry(entry, allow)
    except (ModelIdError, ValueError, OSError, yaml.YAMLError) as exc:
        catalog.problems.append(f"{label}: {exc}")
        return
    if manifest is None:
        # A folder of model folders (cortex.so/<model>/<variant>/, a user's own grouping).
        if depth < MAX_DEPTH and entry.is_dir():
            for sub in sorted(entry.iterdir()):
                _scan_entry(sub, f"{label}/{sub.name}", depth + 1, allow, catalog)
        return
    if manifest.id in catalog.models:
        used_by = catalog.models[manifest.id].path
        catalog.problems.append(f"{label}: model id {manifest.id!r} is already used by {used_by}")
        return
    catalog.models[manifest.id] = replace(manifest, entry=entry)


def _read_entry(entry: Path, allow: tuple[Path, ...]) -> ModelManifest | None:
    if entry.is_file() and entry.suffix.lower() == ".gguf":
        return _gguf_manifest(check_model_id(entry.stem), entry, None, LoadParams())
    if entry.is_dir():
        for name in MANIFEST_NAMES:
            if (entry / name).is_file():
                return _from_manifest(entry, entry / name, allow)
        if is_mlx_folder(entry):
            return ModelManifest(
                id=check_model_id(entry.name),
                engine="mlx",
                path=entry,
                size_bytes=sum(p.stat().st_size for p in entry.glob("*") if p.is_file()),
                has_chat_template=_mlx_has_chat_template(entry),
            )
        ggufs = sorted(entry.glob("*.gguf"))
        if len(ggufs) == 1:
            return _gguf_manifest(check_model_id(entry.name), ggufs[0], None, LoadParams())
    return None


def _from_manifest(folder: Path, manifest_path: Path, allow: tuple[Path, ...]) -> ModelManifest:
    fields = read_manifest(manifest_path)
    name = fields.model_id or folder.name
    model_id = check_model_id(clean_model_id(name) if fields.foreign else name)
    weights = _inside(folder, fields.weights, allow) if fields.weights else None
    if weights is None:
        ggufs = sorted(folder.glob("*.gguf"))
        weights = ggufs[0] if ggufs else folder
    engine = fields.engine or ("llama" if weights.suffix.lower() == ".gguf" else "mlx")
    try:
        load = LoadParams(**fields.load)
    except ValidationError as exc:
        first = field_errors(exc)[0]
        raise ValueError(f"{manifest_path.name}: {first.path}: {first.message}") from None
    template = fields.chat_template
    if engine == "mlx":
        size = sum(p.stat().st_size for p in weights.glob("*") if p.is_file()) if weights.is_dir() else 0
        return ModelManifest(model_id, "mlx", weights, size, template, template is not None, load)
    return _gguf_manifest(model_id, weights, template, load)


def _inside(folder: Path, name: str, allow: tuple[Path, ...]) -> Path:
    # A manifest must not be able to point a worker at an arbitrary file on the host: files
    # stay inside the model's folder unless they resolve under an allow-listed directory.
    # Inside is judged by the name, not by resolving links: a link placed in the folder by
    # the operator (an import) is theirs to make.
    path = Path(name)
    if not path.is_absolute() and ".." not in path.parts:
        candidate = folder / path
    else:
        candidate = (folder / path).resolve()
        # cortex.cpp writes absolute paths to the files beside its manifest: inside is inside.
        inside = candidate.is_relative_to(folder.resolve())
        if not inside and not any(candidate.is_relative_to(d) for d in allow):
            where = f" or under an allowed directory ({', '.join(map(str, allow))})" if allow else ""
            raise ValueError(
                f"file {name!r} must be a relative path inside {folder.name}/{where}; "
                f"an operator allows other directories with --allow-dir"
            )
    if not candidate.exists():
        raise ValueError(f"file {name!r} listed in the manifest does not exist")
    return candidate


def _gguf_manifest(model_id: str, path: Path, template: str | None, load: LoadParams) -> ModelManifest:
    has_template = template is not None or _gguf_has_chat_template(path)
    return ModelManifest(
        id=model_id,
        engine="llama",
        path=path,
        size_bytes=path.stat().st_size,
        chat_template=template,
        has_chat_template=has_template,
        load=load,
    )


def _mlx_has_chat_template(folder: Path) -> bool:
    # transformers keeps the template in tokenizer_config.json, or (since 4.43) beside it.
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def _gguf_has_chat_template(path: Path) -> bool:
    # A byte search of the header is enough to list a model; the engine reads it properly.
    try:
        with path.open("rb") as handle:
            head = handle.read(8 * 1024 * 1024)
    except OSError:
        return False
    return head.startswith(GGUF_MAGIC) and b"tokenizer.chat_template" in head
