"""The facts the estimate needs from a GGUF file: its metadata, array lengths and tensors.

A small reader of the GGUF layout instead of gguf.GGUFReader: the reader builds a numpy
view per array element, which takes 14 s on Gemma 3's 262k-token vocabulary, and the host
agent estimates every model on its disk. The header walk takes 0.05-0.3 s. Only the tensor
type sizes come from the gguf package.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import GGUF_MAGIC, EstimateError

__all__ = ["GGUFInfo", "Tensor", "meta_int", "read_gguf"]

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_SMALL_ARRAY = 65536  # numeric arrays up to this length are kept (per-layer values)
_MAX_DIMS = 4


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[int, ...]
    type_name: str
    offset: int
    n_bytes: int


@dataclass
class GGUFInfo:
    meta: dict[str, object] = field(default_factory=dict)
    lengths: dict[str, int] = field(default_factory=dict)  # element counts of every array
    tensors: list[Tensor] = field(default_factory=list)


def meta_int(value: object) -> int:
    """A metadata number as an int; 0 when it is absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value)


class _Truncated(Exception):
    pass


class _Cursor:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.pos = 0

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise _Truncated
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def u32(self) -> int:
        return int(self.unpack("<I")[0])

    def u64(self) -> int:
        return int(self.unpack("<Q")[0])

    def skip(self, size: int) -> None:
        if self.pos + size > len(self.data):
            raise _Truncated
        self.pos += size

    def string(self) -> str:
        size = self.u64()
        start = self.pos
        self.skip(size)
        return bytes(self.data[start : self.pos]).decode("utf-8", errors="replace")


def read_gguf(path: Path) -> GGUFInfo:
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
            if head != GGUF_MAGIC:
                raise EstimateError(f"{path}: not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r})")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _parse_gguf(path, data)
    except OSError as exc:
        raise EstimateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except _Truncated:
        raise EstimateError(f"{path}: truncated GGUF file (it ends inside its header)") from None


def _parse_gguf(path: Path, data: mmap.mmap) -> GGUFInfo:
    quant_sizes = _quant_sizes(path)
    cursor = _Cursor(data)
    cursor.skip(4)
    version = cursor.u32()
    if version not in (2, 3):
        raise EstimateError(f"{path}: unsupported GGUF version {version} (2 and 3 are read)")
    n_tensors, n_kv = cursor.u64(), cursor.u64()
    # Each entry takes at least 12 bytes: counts beyond the file are garbage, not a loop to run.
    if (n_tensors + n_kv) * 12 > len(data):
        raise EstimateError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} metadata entries)")
    info = GGUFInfo()
    for _ in range(n_kv):
        key = cursor.string()
        value_type = cursor.u32()
        if value_type == _ARRAY:
            _read_array(path, cursor, key, info)
        else:
            info.meta[key] = _read_value(path, cursor, value_type)
    for _ in range(n_tensors):
        info.tensors.append(_read_tensor(path, cursor, quant_sizes))
    alignment = meta_int(info.meta.get("general.alignment")) or 32
    data_start = -(-cursor.pos // alignment) * alignment
    end = max((t.offset + t.n_bytes for t in info.tensors), default=0)
    if data_start + end > len(data):
        raise EstimateError(f"{path}: truncated GGUF file ({len(data)} bytes, its tensors need {data_start + end})")
    return info


def _read_value(path: Path, cursor: _Cursor, value_type: int) -> object:
    if value_type == _STRING:
        return cursor.string()
    fmt = _SCALARS.get(value_type)
    if fmt is None:
        raise EstimateError(f"{path}: corrupt GGUF metadata (unknown value type {value_type})")
    return cursor.unpack("<" + fmt)[0]


def _read_array(path: Path, cursor: _Cursor, key: str, info: GGUFInfo) -> None:
    item_type, count = cursor.u32(), cursor.u64()
    info.lengths[key] = count
    if item_type == _STRING:
        for _ in range(count):
            cursor.skip(cursor.u64())
        return
    fmt = _SCALARS.get(item_type)
    if fmt is None:  # nested arrays appear in no model llama.cpp loads
        raise EstimateError(f"{path}: unsupported GGUF array of type {item_type} in {key}")
    if count <= _SMALL_ARRAY:
        info.meta[key] = list(cursor.unpack(f"<{count}{fmt}"))
    else:
        cursor.skip(count * struct.calcsize(fmt))


def _read_tensor(path: Path, cursor: _Cursor, quant_sizes: dict[int, tuple[str, int, int]]) -> Tensor:
    name = cursor.string()
    n_dims = cursor.u32()
    if not 1 <= n_dims <= _MAX_DIMS:
        raise EstimateError(f"{path}: corrupt GGUF tensor {name!r} ({n_dims} dimensions)")
    dims = tuple(cursor.u64() for _ in range(n_dims))
    type_id, offset = cursor.u32(), cursor.u64()
    if type_id not in quant_sizes:
        raise EstimateError(f"{path}: tensor {name!r} has unknown ggml type {type_id}")
    type_name, block_size, type_size = quant_sizes[type_id]
    n_elements = math.prod(dims)
    if n_elements % block_size:
        raise EstimateError(f"{path}: tensor {name!r} has {n_elements} elements, not whole {type_name} blocks")
    return Tensor(name, dims, type_name, offset, n_elements // block_size * type_size)


def _quant_sizes(path: Path) -> dict[int, tuple[str, int, int]]:
    try:
        from gguf import GGML_QUANT_SIZES
    except ImportError:
        raise EstimateError(
            f"{path}: reading GGUF files needs the gguf package (pip install 'hostler[llama]')"
        ) from None
    return {int(kind): (kind.name, block, size) for kind, (block, size) in GGML_QUANT_SIZES.items()}
