"""hostler's server side: engines, the per-model worker, the host supervisor, models on disk.

Importing this package does not import llama.cpp; the engine modules do, when used.
"""

from .engine import ContextExceeded, Engine, EngineError, Generation, LoadFailed, NoChatTemplate
from .model_worker import ModelWorker
from .registry import ModelManifest, scan
from .supervisor import Supervisor

__all__ = [
    "ContextExceeded",
    "Engine",
    "EngineError",
    "Generation",
    "LoadFailed",
    "ModelManifest",
    "ModelWorker",
    "NoChatTemplate",
    "Supervisor",
    "scan",
]
