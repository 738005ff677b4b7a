"""What a model file is, as every part of hostler judges it: a GGUF file by its magic bytes,
an MLX folder by what mlx-lm loads (config.json and model*.safetensors), and the error a file
that cannot be read raises.

The registry, the store, a pull, the engines and the estimate all ask these questions; the
answers are written here once.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path

__all__ = ["GGUF_MAGIC", "MLX_CONFIG", "MLX_WEIGHTS", "EstimateError", "is_mlx_folder", "lists_mlx_model"]

GGUF_MAGIC = b"GGUF"
MLX_CONFIG = "config.json"
# mlx-lm loads model*.safetensors only; other names (adapters.safetensors) are not a model.
MLX_WEIGHTS = "model*.safetensors"


class EstimateError(ValueError):
    """A model file that cannot be read; the message names the file and what is wrong."""


def is_mlx_folder(folder: Path) -> bool:
    """Whether mlx-lm would load this folder: its config.json and model*.safetensors weights."""
    return (folder / MLX_CONFIG).is_file() and any(folder.glob(MLX_WEIGHTS))


def lists_mlx_model(names: Iterable[str]) -> bool:
    """Whether a listing of file names (a hub repo's, relative to its root) holds an MLX model."""
    found = set(names)
    return MLX_CONFIG in found and any(fnmatchcase(name, MLX_WEIGHTS) for name in found)
