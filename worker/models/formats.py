"""The manifests local-LLM tools keep beside their weights, read as they are, never rewritten.

- hostler's model.yaml: `id`, `engine` (llama | mlx), `files`, `load: {n_ctx, ...}`, `chat_template`.
- cortex.cpp's model.yml / model.yaml: `model` (its id; may hold ':'), `files` (often absolute
  paths into the model's own folder), `engine: llama-cpp`, top-level `ctx_len`, `ngl`,
  `prompt_template`.
- Jan's model.json: `id`, `sources: [{filename, url}]`, `engine` (nitro, llama-cpp,
  cortex.llamacpp, or a remote API), `settings: {ctx_len, ngl, cpu_threads, prompt_template,
  llama_model_path}`. Jan 0.6's model.yml names its file with `model_path`.

cortex and Jan write prompt templates with `{system_message}` and `{prompt}` placeholders
rather than Jinja; such a template is turned into an equivalent Jinja chat template.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import yaml

__all__ = ["ManifestFields", "jinja_from_prompt_template", "read_manifest"]

MANIFEST_NAMES = ("model.yaml", "model.yml", "model.json")
EngineName = Literal["llama", "mlx"]

# Engine names other tools write -> hostler's engine. Jan's older builds said "nitro".
_ENGINES: dict[str, EngineName] = {
    "llama": "llama",
    "llama-cpp": "llama",
    "llamacpp": "llama",
    "llama.cpp": "llama",
    "cortex.llamacpp": "llama",
    "cortex": "llama",
    "nitro": "llama",
    "mlx": "mlx",
    "mlx-lm": "mlx",
}
# Load settings under the names each tool uses -> LoadParams fields.
_LOAD_KEYS = {
    "n_ctx": "n_ctx",
    "ctx_len": "n_ctx",
    "n_batch": "n_batch",
    "n_threads": "n_threads",
    "cpu_threads": "n_threads",
    "n_gpu_layers": "n_gpu_layers",
    "ngl": "n_gpu_layers",
}
_SYSTEM = "{system_message}"
_PROMPT = "{prompt}"


@dataclass(frozen=True)
class ManifestFields:
    model_id: str | None
    engine: EngineName | None
    weights: str | None  # a file name inside the model's folder, or a path the registry checks
    load: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None
    # Written by another tool, whose ids may hold characters a hostler id cannot.
    foreign: bool = False


def read_manifest(path: Path) -> ManifestFields:
    """Reads a model.yaml / model.yml / model.json; raises ValueError naming what is wrong."""
    text = path.read_text(encoding="utf-8")
    try:
        data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name} is not valid JSON: {exc}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} must be a mapping")
    found = data.get("settings")
    settings: dict[str, Any] = found if isinstance(found, dict) else {}
    template = data.get("chat_template") or data.get("prompt_template") or settings.get("prompt_template")
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{path.name}: the chat template must be a string")
    # hostler's own model.yaml never has `model:`; cortex's always does (beside its `id:`).
    foreign = path.suffix == ".json" or "model" in data
    return ManifestFields(
        model_id=_text(data.get("id") or data.get("model")),
        engine=_engine(data.get("engine"), path.name),
        weights=_weights(data, settings),
        load=_load(data, settings),
        chat_template=jinja_from_prompt_template(template) if template else None,
        foreign=foreign,
    )


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def _engine(value: object, manifest: str) -> EngineName | None:
    if value is None:
        return None
    engine = _ENGINES.get(str(value).strip().lower())
    if engine is None:
        raise ValueError(
            f"{manifest}: engine {value!r} is not one hostler runs (llama.cpp or mlx; a remote API is no local model)"
        )
    return engine


def _weights(data: dict[str, Any], settings: dict[str, Any]) -> str | None:
    files = data.get("files") or data.get("files_path") or data.get("file")
    if isinstance(files, list):
        files = files[0] if files else None
    if files:
        return str(files)
    # Jan's paths are relative to its own data folder (or absolute on the machine that wrote
    # them): the file itself sits beside the manifest, so its name is what counts.
    for value in (settings.get("llama_model_path"), data.get("model_path")):
        if isinstance(value, str) and value:
            return _base_name(value)
    sources = data.get("sources")
    if isinstance(sources, list) and sources and isinstance(sources[0], dict):
        name = sources[0].get("filename") or _base_name(str(sources[0].get("url") or ""))
        return str(name) if name else None
    return None


def _base_name(value: str) -> str:
    if "\\" in value:
        return PureWindowsPath(value).name
    return PurePosixPath(value.split("?", 1)[0]).name


def _load(data: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    load = dict(data.get("load") or {})
    # Explicit `load:` wins, then top-level keys (cortex), then Jan's settings.
    for source in (data, settings):
        for key, target in _LOAD_KEYS.items():
            if key in source and target not in load:
                load[target] = source[key]
    return load


def jinja_from_prompt_template(template: str) -> str:
    """A Jinja chat template for a `{system_message}` / `{prompt}` template; Jinja passes through.

    Such a template shows one exchange: A{system_message}B{prompt}C. A conversation renders
    as A system B user C assistant B user C ..., the way cortex and Jan's engine extend it;
    without a system message the system slot is left empty.
    """
    if _PROMPT not in template or re.search(r"{%|{{", template):
        return template
    if _SYSTEM in template and template.index(_SYSTEM) < template.index(_PROMPT):
        before, rest = template.split(_SYSTEM, 1)
        between, after = rest.split(_PROMPT, 1)
    else:
        before, (between, after) = "", template.split(_PROMPT, 1)
    a, b, c = (json.dumps(part, ensure_ascii=False) for part in (before, between, after))
    return (
        "{%- if not messages or messages[0]['role'] != 'system' %}{{ " + a + " }}{% endif -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' %}{{ " + a + " }}{{ message['content'] }}"
        "{%- elif message['role'] == 'user' %}{{ " + b + " }}{{ message['content'] }}"
        "{%- else %}{{ " + c + " }}{{ message['content'] }}{% endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt %}{{ " + c + " }}{% endif -%}"
    )
