"""The gateway's FastAPI application: routes, error answers, guards, one AsyncClient."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from hostler.client import AsyncClient, HostlerError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import openapi
from .batch_api import BatchApi
from .completions import Completions
from .embeddings import Embeddings
from .errors import ApiError, describe_validation, from_hostler
from .guards import ApiKeyGuard, BodyLimit
from .management import Management
from .settings import GatewaySettings
from .sse import ClientGone

log = logging.getLogger("hostler.gateway")

# HTTP statuses Starlette raises itself (unknown path, wrong method), in OpenAI's words.
_HTTP_TYPES = {404: "not_found_error", 405: "invalid_request_error"}


def create_app(settings: GatewaySettings) -> FastAPI:
    """The ASGI app of one gateway; its AsyncClient opens at startup and closes at shutdown."""
    client = AsyncClient(settings.redis_url, prefix=settings.prefix, timeout=settings.timeout_s)
    completions = Completions(client, settings)
    embeddings = Embeddings(client, settings)
    management = Management(client, settings)
    batch_api = BatchApi(client, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with batch_api.running():
                yield
        finally:
            await client.aclose()

    app = FastAPI(
        title="hostler gateway",
        summary="OpenAI-compatible HTTP in front of hostler's Redis queues.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    _add_error_handlers(app, settings)
    app.add_api_route("/v1/chat/completions", completions.chat, methods=["POST"])
    app.add_api_route("/v1/completions", completions.text, methods=["POST"])
    app.add_api_route("/v1/embeddings", embeddings.create, methods=["POST"])
    app.add_api_route("/v1/models", management.list_models, methods=["GET"])
    app.add_api_route("/v1/models/{model}", management.get_model, methods=["GET"])
    app.add_api_route("/v1/models/{model}/load", management.load, methods=["POST"])
    app.add_api_route("/v1/models/{model}/unload", management.unload, methods=["POST"])
    app.add_api_route("/v1/tokenize", management.tokenize, methods=["POST"])
    app.add_api_route("/management/processes", management.processes, methods=["GET"])
    app.add_api_route("/health", management.health, methods=["GET"])
    app.add_api_route("/metrics", management.metrics, methods=["GET"])
    batch_api.add_routes(app)
    openapi.install(app)
    # Outermost first: the key is checked before a byte of the body is read.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, larger=batch_api.body_limits())
    app.add_middleware(ApiKeyGuard, keys=settings.api_keys)
    return app


def _answer(error: ApiError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


def _add_error_handlers(app: FastAPI, settings: GatewaySettings) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _answer(exc)

    async def hostler_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HostlerError)
        error = from_hostler(exc, no_capacity_retry_s=settings.no_capacity_retry_s)
        if error.status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _answer(error)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _answer(describe_validation(list(exc.errors())))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = _HTTP_TYPES.get(exc.status_code, "invalid_request_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _answer(ApiError(exc.status_code, message, type=kind, code=kind))

    async def client_gone(request: Request, exc: Exception) -> Response:
        # Nobody reads this; nginx's 499 says what happened in the access log.
        return Response(status_code=499)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _answer(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error", code="internal"))

    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HostlerError, hostler_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientGone, client_gone)
