"""Models on disk: which files and folders in a models directory are models, and their ids.

A model is a `.gguf` file (id: the file's stem), a folder with a `model.yaml`
(id, engine, file, chat template, load defaults), or an MLX folder (config.json and
*.safetensors). Ids are names, never paths.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from hostler.schemas import MODEL_ID_PATTERN, LoadParams, ModelInfo
from pydantic import ValidationError

Engine = Literal["llama", "mlx"]
MANIFEST_NAMES = ("model.yaml", "model.yml")
ALLOW_DIRS_ENV = "HOSTLER_ALLOW_DIRS"
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
        if entry.name.startswith("."):
            continue
        try:
            manifest = _read_entry(entry, allow)
        except (ModelIdError, ValueError, OSError, yaml.YAMLError) as exc:
            problems.append(f"{entry.name}: {exc}")
            continue
        if manifest is None:
            continue
        if manifest.id in models:
            problems.append(f"{entry.name}: model id {manifest.id!r} is already used by {models[manifest.id].path}")
            continue
        models[manifest.id] = manifest
    return Catalog(models, problems)


def _read_entry(entry: Path, allow: tuple[Path, ...]) -> ModelManifest | None:
    if entry.is_file() and entry.suffix.lower() == ".gguf":
        return _gguf_manifest(check_model_id(entry.stem), entry, None, LoadParams())
    if entry.is_dir():
        for name in MANIFEST_NAMES:
            if (entry / name).is_file():
                return _from_model_yaml(entry, entry / name, allow)
        if (entry / "config.json").is_file() and any(entry.glob("*.safetensors")):
            return ModelManifest(
                id=check_model_id(entry.name),
                engine="mlx",
                path=entry,
                size_bytes=sum(p.stat().st_size for p in entry.glob("*") if p.is_file()),
                has_chat_template=(entry / "tokenizer_config.json").is_file(),
            )
        ggufs = sorted(entry.glob("*.gguf"))
        if len(ggufs) == 1:
            return _gguf_manifest(check_model_id(entry.name), ggufs[0], None, LoadParams())
    return None


def _from_model_yaml(folder: Path, manifest_path: Path, allow: tuple[Path, ...]) -> ModelManifest:
    data: Any = yaml.safe_load(manifest_path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{manifest_path.name} must be a mapping")
    model_id = check_model_id(str(data.get("id") or data.get("model") or folder.name))
    engine = data.get("engine")
    files = data.get("files") or data.get("files_path") or data.get("file")
    if isinstance(files, list):
        files = files[0] if files else None
    weights = _inside(folder, str(files), allow) if files else None
    if weights is None:
        ggufs = sorted(folder.glob("*.gguf"))
        weights = ggufs[0] if ggufs else folder
    if engine is None:
        engine = "llama" if weights.suffix.lower() == ".gguf" else "mlx"
    if engine not in ("llama", "mlx"):
        raise ValueError(f"{manifest_path.name}: unknown engine {engine!r} (llama or mlx)")
    try:
        load = LoadParams(**_load_fields(data))
    except ValidationError as exc:
        raise ValueError(f"{manifest_path.name}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    template = data.get("chat_template") or data.get("prompt_template")
    if engine == "mlx":
        size = sum(p.stat().st_size for p in weights.glob("*") if p.is_file()) if weights.is_dir() else 0
        return ModelManifest(model_id, "mlx", weights, size, template, template is not None, load)
    return _gguf_manifest(model_id, weights, template, load)


def _load_fields(data: dict[str, Any]) -> dict[str, Any]:
    load = dict(data.get("load") or {})
    # cortex.cpp's model.yaml keeps these at the top level.
    for key in ("n_ctx", "n_batch", "n_threads", "n_gpu_layers"):
        if key in data and key not in load:
            load[key] = data[key]
    if "ctx_len" in data and "n_ctx" not in load:
        load["n_ctx"] = data["ctx_len"]
    if "ngl" in data and "n_gpu_layers" not in load:
        load["n_gpu_layers"] = data["ngl"]
    return load


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
        if not any(candidate.is_relative_to(d) for d in allow):
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


def _gguf_has_chat_template(path: Path) -> bool:
    # A byte search of the header is enough to list a model; the engine reads it properly.
    try:
        with path.open("rb") as handle:
            head = handle.read(8 * 1024 * 1024)
    except OSError:
        return False
    return head.startswith(b"GGUF") and b"tokenizer.chat_template" in head
