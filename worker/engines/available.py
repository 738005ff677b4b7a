"""Which engines this host can run, judged without importing their heavy libraries.

A host reports the answer with its models, so the controller never places a model on a
host that lacks its engine, and `hostler models ls` can say why a model is unavailable.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import cache

from .protocol import EngineFactory

ENGINES = ("llama", "mlx")
# Comma-separated engines an operator turns off on this host (e.g. a broken Metal driver).
DISABLE_ENV = "HOSTLER_DISABLE_ENGINES"

# The Python modules each engine imports, with the install hint a person needs.
_REQUIREMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "llama": (("llama_cpp", "llama-cpp-python is not installed (pip install 'hostler[llama]')"),),
    "mlx": (
        ("mlx", "mlx is not installed (pip install 'hostler[mlx]')"),
        ("mlx_lm", "mlx-lm is not installed (pip install 'hostler[mlx]')"),
    ),
}


def engine_availability() -> dict[str, str | None]:
    """Engine name -> None when this host can run it, else the reason it cannot."""
    return dict(_availability())


class EngineUnavailable(RuntimeError):
    """This host lacks what an engine needs; the message says what to install."""


@cache
def _availability() -> tuple[tuple[str, str | None], ...]:
    # Cached for the life of the process: installing a library needs a restart anyway.
    disabled = {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}
    return tuple((name, _reason(name, disabled)) for name in ENGINES)


def unavailable_reason(engine: str) -> str | None:
    """Why this host cannot run `engine` (None: it can)."""
    if engine not in _REQUIREMENTS:
        return f"unknown engine {engine!r} (known: {', '.join(ENGINES)})"
    return engine_availability()[engine]


def _reason(engine: str, disabled: set[str]) -> str | None:
    if engine in disabled:
        return f"the {engine} engine is turned off on this host ({DISABLE_ENV})"
    for module, hint in _REQUIREMENTS[engine]:
        if _missing(module):
            return hint
    if engine == "mlx" and sys.platform not in ("darwin", "linux"):
        return f"mlx runs on macOS (Metal) and Linux (CPU), not on {sys.platform}"
    return None


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        # A broken parent package or a module with __spec__ = None: either way not usable.
        return True


def engine_factory(engine: str) -> EngineFactory:
    """The loader of `engine`'s models; its library is imported only now, by the worker."""
    reason = unavailable_reason(engine)
    if reason is not None:
        raise EngineUnavailable(f"this host cannot run the {engine} engine: {reason}")
    if engine == "mlx":
        from .mlx_batch import MlxSlots, batch_generation_unavailable

        if batch_generation_unavailable() is None:
            return MlxSlots
        from .mlx import MlxEngine  # an older mlx-lm: one job at a time

        return MlxEngine
    from .llama_slots import LlamaSlots

    return LlamaSlots
