"""The server half of the `hostler` command: up, worker, host, controller, janitor, gateway,
models, hardware. The client half lives in hostler.client.cli."""

from .main import main

__all__ = ["main"]
