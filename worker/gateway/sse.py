"""Server-sent events for a streamed completion, and noticing a client that went away.

The response watches the connection while it streams: when the client disconnects, the
hostler stream is closed at once, which stops waiting for the job; a job still queued is
then canceled by the janitor, and a running generation stops once nobody listens.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")
DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Awaits work unless the client disconnects first; then work is canceled and ClientGone raised.

    Canceling a hostler wait releases its job's waiting key, so the queued job goes too.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also reached when this request's own task is canceled (server shutdown).
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientGone
    return task.result()


class EventStream(StreamingResponse):
    """Sends a stream of SSE chunks; closes its source when done, failed or disconnected."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]],
        on_error: Callable[[Exception], bytes],
    ) -> None:
        super().__init__(chunks, headers=HEADERS, media_type="text/event-stream")
        self.chunks = chunks
        self.close = close
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.ensure_future(self._send_all(send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, watcher):
                if not task.done():
                    task.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)
            await self.close()
        if sender.done() and not sender.cancelled() and (error := sender.exception()) is not None:
            if not isinstance(error, OSError):  # a send to a closed connection is a disconnect
                raise error

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        # The chunk that ends in [DONE] is held, so that the end of the body goes out in its write.
        held = b""
        while True:
            try:
                chunk = await self.chunks.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:  # noqa: BLE001 - once the headers are out, an error is a stream event
                held += self.on_error(exc)
                break
            if held:
                await send({"type": "http.response.body", "body": held, "more_body": True})
            held = b""
            if chunk.endswith(DONE):
                held = chunk
            else:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": held, "more_body": False})
