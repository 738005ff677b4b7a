"""The facts the estimate needs from an MLX folder: its config.json and the bytes, by dtype,
of the tensors in its safetensors files (read from their headers, never from the data)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import TypeGuard

from .files import MLX_CONFIG, EstimateError

__all__ = ["read_mlx_config", "safetensors_bytes"]

_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
_MAX_HEADER = 100 * 1024**2  # the format's own limit


def read_mlx_config(path: Path) -> dict[str, object]:
    """An MLX folder's config.json, with a multimodal checkpoint's text_config folded in."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EstimateError(f"{path}: missing (an MLX model folder needs {MLX_CONFIG})") from None
    except OSError as exc:
        raise EstimateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise EstimateError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise EstimateError(f"{path}: not a JSON object")
    # Multimodal checkpoints keep the language model's shape under text_config.
    text = config.get("text_config")
    if isinstance(text, dict):
        return {**config, **text}
    return config


def safetensors_bytes(path: Path) -> dict[str, int]:
    """Bytes of tensor data in one file, by dtype."""
    try:
        with path.open("rb") as handle:
            size_bytes = handle.read(8)
            if len(size_bytes) < 8:
                raise EstimateError(f"{path}: truncated safetensors file (no header length)")
            (header_len,) = struct.unpack("<Q", size_bytes)
            if header_len > _MAX_HEADER:
                raise EstimateError(f"{path}: malformed safetensors header (claims {header_len} bytes)")
            raw = handle.read(header_len)
            file_size = handle.seek(0, 2)
    except OSError as exc:
        raise EstimateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) < header_len:
        raise EstimateError(f"{path}: truncated safetensors header")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EstimateError(f"{path}: malformed safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise EstimateError(f"{path}: malformed safetensors header (not a JSON object)")
    by_dtype: dict[str, int] = {}
    last = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = _tensor_span(path, name, entry)
        dtype = str(entry["dtype"])
        by_dtype[dtype] = by_dtype.get(dtype, 0) + end - start
        last = max(last, end)
    if 8 + header_len + last > file_size:
        raise EstimateError(f"{path}: truncated safetensors file ({file_size} bytes)")
    return by_dtype


def _tensor_span(path: Path, name: str, entry: object) -> tuple[int, int]:
    if not isinstance(entry, dict):
        raise EstimateError(f"{path}: malformed safetensors header entry {name!r}")
    offsets, shape, dtype = entry.get("data_offsets"), entry.get("shape"), entry.get("dtype")
    if not (_counts(offsets) and len(offsets) == 2 and _counts(shape) and isinstance(dtype, str)):
        raise EstimateError(f"{path}: malformed safetensors header entry {name!r}")
    start, end = offsets
    item = _DTYPE_BYTES.get(dtype)
    if not 0 <= start <= end or (item is not None and end - start != math.prod(shape) * item):
        raise EstimateError(f"{path}: tensor {name!r} has data_offsets that do not fit its {dtype} shape {shape}")
    return start, end


def _counts(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
