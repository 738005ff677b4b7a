"""Everything `hostler models show` says about one model on this machine's disk."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from hostler.worker.memory.estimate import EstimateError, estimate
from hostler.worker.memory.files import MLX_CONFIG
from hostler.worker.memory.gguf import read_gguf

from .formats import MANIFEST_NAMES
from .registry import ModelManifest


@dataclass(frozen=True)
class FileEntry:
    name: str
    size_bytes: int


@dataclass(frozen=True)
class ModelDetails:
    id: str
    engine: str
    path: str  # the weights file or folder, links resolved
    files: list[FileEntry]
    size_bytes: int
    context_length: int | None  # what the model was trained for, from its own metadata
    n_ctx: int  # what a load uses by default
    chat_template: bool
    memory_bytes: int | None
    memory: str | None
    memory_error: str | None
    source: str
    local: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def details(manifest: ModelManifest) -> ModelDetails:
    files = _files(manifest)
    memory_bytes = memory = memory_error = None
    try:
        found = estimate(manifest.path, manifest.engine, manifest.load)
        memory_bytes, memory = found.total_bytes, found.describe()
        if found.gpu is not None:  # model.yaml's n_gpu_layers offloads layers to one GPU
            memory += f" + {found.gpu.describe()}"
    except (EstimateError, ValueError, OSError) as exc:
        memory_error = str(exc)
    return ModelDetails(
        id=manifest.id,
        engine=manifest.engine,
        path=str(manifest.path.resolve()),
        files=files,
        size_bytes=sum(f.size_bytes for f in files),
        context_length=_context_length(manifest),
        n_ctx=manifest.load.n_ctx,
        chat_template=manifest.has_chat_template,
        memory_bytes=memory_bytes,
        memory=memory,
        memory_error=memory_error,
        source=source_of(manifest),
    )


def _files(manifest: ModelManifest) -> list[FileEntry]:
    path = manifest.path
    if path.is_dir():
        return [FileEntry(p.name, p.stat().st_size) for p in sorted(path.iterdir()) if p.is_file()]
    try:
        return [FileEntry(path.name, path.stat().st_size)]
    except OSError:
        return []


def _context_length(manifest: ModelManifest) -> int | None:
    try:
        if manifest.engine == "llama":
            meta = read_gguf(manifest.path).meta
            value = meta.get(f"{meta.get('general.architecture')}.context_length")
        else:
            config = json.loads((manifest.path / MLX_CONFIG).read_text(encoding="utf-8"))
            value = config.get("max_position_embeddings") if isinstance(config, dict) else None
    except (EstimateError, OSError, ValueError):
        return None
    return value if isinstance(value, int) else None


def source_of(manifest: ModelManifest) -> str:
    """Where the model came from, for a person."""
    entry = manifest.entry
    if entry is None:
        return "unknown"
    if entry.is_symlink():
        return f"link in the models directory to {entry.resolve()}"
    if entry.is_file():
        return "file placed in the models directory"
    for name in MANIFEST_NAMES:
        if (entry / name).is_file():
            return _manifest_source(entry / name)
    return "folder placed in the models directory"


def _manifest_source(path: Path) -> str:
    if path.suffix == ".json":
        return f"Jan model folder ({path.name})"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return f"folder with an unreadable {path.name}"
    source = data.get("source") if isinstance(data, dict) else None
    if isinstance(source, dict) and source.get("kind") == "pull":
        return f"pulled from {source.get('repo')}@{str(source.get('revision'))[:12]} ({source.get('endpoint')})"
    if isinstance(source, dict) and source.get("kind") == "import":
        return f"imported: linked to {source.get('path')}"
    if isinstance(data, dict) and "model" in data:
        return f"cortex.cpp model folder ({path.name})"
    return f"folder with a hand-written {path.name}"
