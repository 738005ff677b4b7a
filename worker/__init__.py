"""hostler's server side: engines, the per-model worker, the host agent, the placement
controller, memory estimates, models on disk.

Importing this package does not import llama.cpp; the engine modules do, when used.
"""

from hostler.worker.control.controller import Autoscale, Controller
from hostler.worker.control.host_agent import HostAgent
from hostler.worker.engines.protocol import ContextExceeded, Engine, EngineError, Generation, LoadFailed, NoChatTemplate
from hostler.worker.models.registry import ModelManifest, scan
from hostler.worker.serving.worker import ModelWorker

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
