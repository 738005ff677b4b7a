"""How llama.cpp must be loaded on this CPU: extra buffer types, flash attention, and a file
check before llama.cpp sees it.

llama.cpp built for the machine it runs on (llama-cpp-python's default source build) puts
quantized weights in "extra" buffer types: repacked layouts for AVX2/AVX-512, and AMX tiles
where the CPU has AMX. On AMX CPUs ggml's AMX matrix multiply crashes the process with
SIGSEGV on the first prompt of more than one token (seen with llama-cpp-python 0.3.36 on
SmolLM2-135M Q4_1 and on the tiny test models; gdb puts the fault in
`ggml_backend_amx_mul_mat`). A crash takes every job of the worker with it, so on such CPUs
models load without extra buffer types (llama-server's `--no-repack`). Elsewhere the
repacked layouts stay on: they speed up prompt evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hostler.worker.hardware.cpu import llama_extra_buffers_safe as extra_buffers_safe
from hostler.worker.memory.files import GGUF_MAGIC

from .protocol import LoadFailed

__all__ = ["check_gguf_header", "extra_buffers_safe", "flash_attn_type", "model_params", "safe_llama_defaults"]


def model_params(lib: Any) -> Any:
    """llama.cpp's default model params, made safe for this CPU (lib: the llama_cpp module)."""
    params = lib.llama_model_default_params()
    if not extra_buffers_safe():
        params.use_extra_bufts = False
    return params


@contextlib.contextmanager
def safe_llama_defaults() -> Iterator[None]:
    """While open, llama_cpp.Llama(...) loads models with model_params() instead of the raw defaults.

    Llama's constructor builds its model params from the library default and loads at once,
    with no argument for extra buffer types; this is the one seam it leaves.
    """
    if extra_buffers_safe():
        yield
        return
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = defaults
    try:
        yield
    finally:
        lib.llama_model_default_params = original


def flash_attn_type(lib: Any, flash_attn: bool | None) -> int:
    """llama.cpp's flash attention setting for LoadParams.flash_attn.

    None is llama.cpp's own default (auto: on where the backend has the kernel, as llama-server
    runs): measured on SmolLM2, 2 CPU cores, 8-9% more tokens/s at 1 and 8 slots, and batched
    texts equal their one-slot texts as often or more (scripts/bench_llama_batch.py).
    llama-cpp-python's Llama turns it off unless flash_attn=True, so a one-slot text equals
    Llama(flash_attn=True)'s on a CPU.
    """
    if flash_attn is None:
        return int(lib.LLAMA_FLASH_ATTN_TYPE_AUTO)
    return int(lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED)


def check_gguf_header(path: Path) -> None:
    # llama.cpp aborts the whole process on some malformed files; refuse the obvious ones first.
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise LoadFailed(f"cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise LoadFailed(f"{path.name} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
