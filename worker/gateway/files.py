"""/v1/files: upload a Batch API input, read a file's metadata or content, list, delete.

Uploads are multipart (`file`, `purpose`), as OpenAI's SDKs send them; only purpose `batch` is
taken: hostler keeps files only to run batches. The bytes go to Redis (batch_store.py says why
and how they are bounded).
"""

from __future__ import annotations

from hostler.schemas import FileDeleted
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .batch_store import FileStore
from .errors import ApiError

# Form fields an upload may carry besides the file; OpenAI's SDK sends nothing else by default.
_PURPOSES = ("batch",)
MAX_LIST = 10_000


class Files:
    def __init__(self, store: FileStore) -> None:
        self.store = store

    async def create(self, request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, "upload a file as multipart/form-data with the fields 'file' and 'purpose'",
                           code="invalid_request")  # fmt: skip
        async with request.form(max_files=1, max_fields=4) as form:
            unknown = sorted(set(form) - {"file", "purpose"})
            if unknown:
                raise ApiError(400, f"unknown parameter {unknown[0]!r}: an upload takes 'file' and 'purpose'",
                               param=unknown[0], code="unknown_parameter")  # fmt: skip
            purpose = form.get("purpose")
            if purpose not in _PURPOSES:
                raise ApiError(400, f"invalid purpose {purpose!r}: hostler keeps files only for batches ('batch')",
                               param="purpose", code="invalid_value")  # fmt: skip
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "missing required parameter 'file' (a file part)", param="file",
                               code="missing_parameter")  # fmt: skip
            content = await upload.read()
            meta = await self.store.upload(upload.filename or "upload.jsonl", content)
        return JSONResponse(meta.model_dump())

    async def retrieve(self, request: Request) -> Response:
        meta = await self.store.get(request.path_params["file_id"])
        return JSONResponse(meta.model_dump())

    async def content(self, request: Request) -> Response:
        data = await self.store.content(request.path_params["file_id"])
        return Response(data, media_type="application/octet-stream")

    async def delete(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        await self.store.delete(file_id)
        return JSONResponse(FileDeleted(id=file_id, deleted=True).model_dump())

    async def list(self, request: Request) -> Response:
        after, limit = page_params(request, default=MAX_LIST, most=MAX_LIST)
        return JSONResponse((await self.store.page(after, limit)).model_dump())


def page_params(request: Request, *, default: int, most: int) -> tuple[str | None, int]:
    """The `after` and `limit` query parameters of a list; 400 naming a bad one."""
    after = request.query_params.get("after") or None
    raw = request.query_params.get("limit")
    if raw is None:
        return after, default
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= most:
        raise ApiError(400, f"invalid limit {raw!r}: a whole number from 1 to {most}", param="limit",
                       code="invalid_value")  # fmt: skip
    return after, limit
