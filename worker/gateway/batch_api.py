"""The Batch API over HTTP, put together: its stores, routes, and the lease loop that runs batches.

Modules: `batch_store` (files and batches in Redis, and why there), `files` (/v1/files),
`batches` (/v1/batches), `batch_runner` (one batch on the queue, resumable), `batch_leases`
(which gateway runs which batch, and taking over from a dead one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from hostler.client import AsyncClient

from .batch_leases import BatchLeases
from .batch_runner import BatchRun
from .batch_store import BatchStore, FileStore
from .batches import Batches
from .files import Files
from .settings import MULTIPART_ROOM_BYTES, GatewaySettings

UPLOAD_PATH = "/v1/files"


class BatchApi:
    def __init__(self, client: AsyncClient, settings: GatewaySettings) -> None:
        self.settings = settings
        files = FileStore(client.connection, client.keys, max_file_bytes=settings.max_file_bytes,
                          max_files=settings.max_files, max_bytes=settings.max_stored_bytes)  # fmt: skip
        batches = BatchStore(client.connection, client.keys)

        def make_run(batch_id: str) -> BatchRun:
            return BatchRun(client, files, batches, batch_id, max_in_flight=settings.batch_in_flight)

        self.leases = BatchLeases(client.connection, client.keys, make_run)
        self.files = Files(files)
        self.batches = Batches(files, batches, self.leases, max_lines=settings.max_batch_lines)

    def body_limits(self) -> dict[str, int]:
        """Uploads may be as large as a file may be, plus the multipart envelope."""
        return {UPLOAD_PATH: self.settings.max_file_bytes + MULTIPART_ROOM_BYTES}

    def add_routes(self, app: FastAPI) -> None:
        app.add_api_route(UPLOAD_PATH, self.files.create, methods=["POST"])
        app.add_api_route(UPLOAD_PATH, self.files.list, methods=["GET"])
        app.add_api_route("/v1/files/{file_id}", self.files.retrieve, methods=["GET"])
        app.add_api_route("/v1/files/{file_id}", self.files.delete, methods=["DELETE"])
        app.add_api_route("/v1/files/{file_id}/content", self.files.content, methods=["GET"])
        app.add_api_route("/v1/batches", self.batches.create, methods=["POST"])
        app.add_api_route("/v1/batches", self.batches.list, methods=["GET"])
        app.add_api_route("/v1/batches/{batch_id}", self.batches.retrieve, methods=["GET"])
        app.add_api_route("/v1/batches/{batch_id}/cancel", self.batches.cancel, methods=["POST"])

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Runs batches (this gateway's share, and any a dead gateway left) while the app serves."""
        task = asyncio.create_task(self.leases.serve(), name="batch leases")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.leases.close()
