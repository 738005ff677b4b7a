"""hostler's server side: engines, the per-model worker, the host agent, the placement
controller, memory estimates, models on disk.

Importing this package does not import llama.cpp; the engine modules do, when used.
"""

from .controller import Autoscale, Controller
from .engine import ContextExceeded, Engine, EngineError, Generation, LoadFailed, NoChatTemplate
from .host_agent import HostAgent
from .model_worker import ModelWorker
from .registry import ModelManifest, scan

__all__ = [
    "Autoscale",
    "ContextExceeded",
    "Controller",
    "Engine",
    "EngineError",
    "Generation",
    "HostAgent",
    "LoadFailed",
    "ModelManifest",
    "ModelWorker",
    "NoChatTemplate",
    "scan",
]
