"""POST /v1/embeddings: one hostler embedding job per request, however many inputs it holds.

The job is queued with the gateway's timeout as its start deadline, as completions are, so a
request that waits too long is a 504 and its job leaves the queue. Inputs are checked before
anything is queued (an empty list, an empty string, a wrong type: 400 naming the input);
what only the model knows (an input longer than its context, dimensions larger than its
own) comes back from the worker as a 400 too. The vectors travel from the worker as base64
float32, which is OpenAI's base64 encoding: encoding_format base64 passes them on as they
are, float decodes them.
"""

from __future__ import annotations

from hostler.client import AsyncClient, ContextExceeded
from hostler.schemas import EmbeddingRequest, EmbeddingResult, embedding_body
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import shapes
from .errors import ApiError
from .settings import GatewaySettings
from .sse import until_disconnected


class Embeddings:
    def __init__(self, client: AsyncClient, settings: GatewaySettings) -> None:
        self.client = client
        self.settings = settings

    async def create(self, request: Request) -> Response:
        req: EmbeddingRequest = shapes.parse(EmbeddingRequest, await request.body())
        timeout = self.settings.timeout_s
        work = self.client.embed(
            req.model, req.inputs(), dimensions=req.dimensions, timeout=timeout, start_within=timeout
        )
        try:
            result: EmbeddingResult = await until_disconnected(request, work)
        except ContextExceeded as exc:
            raise ApiError(400, str(exc), param="input", code="context_length_exceeded") from None
        return JSONResponse(embedding_body(result, req.encoding_format))
