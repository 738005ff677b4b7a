"""What a request must pass before any handler runs: an API key, and a bounded body.

Both are plain ASGI middleware, so they hold for streaming responses too and a refused
request never reaches a route, let alone a queue.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from pydantic import SecretStr

from .errors import ApiError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# Probes and load balancers call /health without credentials; the API's description is no secret,
# and the /docs page could not fetch it with one.
OPEN_PATHS = frozenset({"/health", "/docs", "/openapi.json"})


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"request body is larger than the limit of {limit} bytes", code="request_too_large", param=None
        )


async def send_error(send: Send, error: ApiError) -> None:
    from starlette.responses import JSONResponse

    response = JSONResponse(error.body(), status_code=error.status, headers=error.headers())
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def key_matches(presented: str, keys: tuple[SecretStr, ...]) -> bool:
    """Compares with every key in constant time, so timing tells nothing about any of them."""
    given = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.get_secret_value().encode())
    return matched


class ApiKeyGuard:
    """Every path but /health needs `Authorization: Bearer KEY`; keys are never logged."""

    def __init__(self, app: App, keys: tuple[SecretStr, ...]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not key_matches(token.strip(), self.keys):
            message = "invalid API key" if header else "missing API key: send 'Authorization: Bearer KEY'"
            await send_error(send, ApiError(401, message, code="invalid_api_key"))
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses a body over the limit: at once from Content-Length, else while it is read.
    `larger` gives paths (file uploads) their own, larger limit."""

    def __init__(self, app: App, limit: int, larger: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.larger = dict(larger or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope.get("path", ""), self.limit)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_error(send, ApiError(400, "invalid Content-Length header", code="invalid_request"))
                    return
                if declared > limit:
                    await send_error(send, BodyTooLarge(limit))
                    return
        received = 0

        async def bounded() -> Message:
            # Chunked bodies have no Content-Length: count as they come, stop at the limit.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, bounded, send)
