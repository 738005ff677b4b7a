"""/v1/batches: create a batch from an uploaded file, read it, list them, cancel one.

Creating only checks and stores the batch (status `validating`); whichever gateway takes its
lease runs it (batch_leases.py, batch_runner.py), usually this one, within a second.
"""

from __future__ import annotations

from hostler.schemas import (
    COMPLETION_WINDOW_S,
    OPENAI_URLS,
    BatchCreateRequest,
    BatchObject,
    RequestCounts,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import shapes
from .batch_leases import BatchLeases
from .batch_store import BatchStore, FileStore, new_id, now
from .errors import ApiError
from .files import page_params

DEFAULT_LIST = 20
MAX_LIST = 100
# A batch may be cancelled while it has not ended; cancelling one already cancelling changes nothing.
_CANCELLABLE = ("validating", "in_progress")


class Batches:
    def __init__(self, files: FileStore, batches: BatchStore, leases: BatchLeases, *, max_lines: int) -> None:
        self.files = files
        self.batches = batches
        self.leases = leases
        self.max_lines = max_lines

    async def create(self, request: Request) -> Response:
        body: BatchCreateRequest = shapes.parse(BatchCreateRequest, await request.body())
        if body.endpoint not in OPENAI_URLS:
            raise ApiError(400, f"endpoint {body.endpoint!r} cannot be batched here: use {' or '.join(OPENAI_URLS)}",
                           param="endpoint", code="invalid_value")  # fmt: skip
        meta = await self.files.get(body.input_file_id)
        if meta.purpose != "batch":
            raise ApiError(400, f"file {meta.id!r} has purpose {meta.purpose!r}; a batch's input needs 'batch'",
                           param="input_file_id", code="invalid_value")  # fmt: skip
        content = await self.files.content(meta.id)
        lines = sum(1 for line in content.splitlines() if line.strip())
        if lines == 0:
            raise ApiError(400, f"file {meta.id!r} holds no request lines", param="input_file_id", code="empty_file")
        if lines > self.max_lines:
            raise ApiError(400, f"file {meta.id!r} holds {lines} requests, over the limit of {self.max_lines} per "
                           "batch (hostler gateway --max-batch-lines); split it", param="input_file_id",
                           code="too_many_requests_in_batch")  # fmt: skip
        created = now()
        batch = BatchObject(
            id=new_id("batch_"),
            endpoint=body.endpoint,
            input_file_id=meta.id,
            created_at=created,
            expires_at=created + COMPLETION_WINDOW_S,
            metadata=body.metadata,
            request_counts=RequestCounts(total=lines, completed=0, failed=0),
        )
        await self.batches.create(batch)
        self.leases.wake()
        return JSONResponse(batch.model_dump())

    async def retrieve(self, request: Request) -> Response:
        return JSONResponse((await self.batches.get(request.path_params["batch_id"])).model_dump())

    async def list(self, request: Request) -> Response:
        after, limit = page_params(request, default=DEFAULT_LIST, most=MAX_LIST)
        return JSONResponse((await self.batches.page(after, limit)).model_dump())

    async def cancel(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        batch = await self.batches.get(batch_id)  # 404 if there is none
        refused: list[str] = []

        def cancel(stored: BatchObject) -> BatchObject | None:
            if stored.status in _CANCELLABLE:
                return stored.model_copy(update={"status": "cancelling", "cancelling_at": now()})
            if stored.status not in ("cancelling", "cancelled"):
                refused.append(stored.status)
            return None

        await self.batches.update(batch_id, cancel)
        if refused:
            raise ApiError(400, f"batch {batch_id!r} is {refused[0]}; only a batch not yet ended can be cancelled",
                           param="batch_id", code="invalid_state")  # fmt: skip
        self.leases.wake()
        return JSONResponse((await self.batches.get(batch.id)).model_dump())
