"""POST /v1/chat/completions and /v1/completions: one hostler job per request.

Every job is queued with the gateway's timeout as its start deadline as well as the wait,
so a request that waits too long is answered 504 and its job leaves the queue instead of
running for nobody. A streamed request waits for its first piece before sending headers:
queue and model errors (429, 503, 504, 400) keep their HTTP status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from hostler.client import AsyncClient, AsyncStream, HostlerError, Piece
from hostler.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    CompletionResult,
    TokenLogprob,
    chat_logprobs,
    completion_logprobs,
    finish_reason,
    response_body,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import shapes
from .errors import ApiError, from_hostler
from .settings import GatewaySettings
from .sse import DONE, EventStream, event, until_disconnected


class Completions:
    def __init__(self, client: AsyncClient, settings: GatewaySettings) -> None:
        self.client = client
        self.settings = settings

    def _options(self) -> dict[str, Any]:
        return {"timeout": self.settings.timeout_s, "start_within": self.settings.timeout_s}

    async def chat(self, request: Request) -> Response:
        req: ChatCompletionRequest = shapes.parse(ChatCompletionRequest, await request.body())
        ids = shapes.Ids("chatcmpl", req.model)
        messages = req.hostler_messages()
        tools = req.tool_options()
        if not req.stream:
            result = await until_disconnected(
                request, self.client.chat(req.model, messages, **self._options(), **tools, **req.sampling())
            )
            return JSONResponse(response_body("chat", result, ids.id, ids.created))
        stream = await self.client.chat(req.model, messages, stream=True, **self._options(), **tools, **req.sampling())
        return await self._streamed(request, stream, _ChatChunks(ids, req.include_usage()))

    async def text(self, request: Request) -> Response:
        req: CompletionRequest = shapes.parse(CompletionRequest, await request.body())
        ids = shapes.Ids("cmpl", req.model)
        if not req.stream:
            result = await until_disconnected(
                request, self.client.complete(req.model, req.text(), **self._options(), **req.sampling())
            )
            return JSONResponse(response_body("completion", result, ids.id, ids.created))
        stream = await self.client.stream(req.model, req.text(), **self._options(), **req.sampling())
        return await self._streamed(request, stream, _TextChunks(ids, req.include_usage()))

    async def _streamed(self, request: Request, stream: AsyncStream, chunks: _Chunks) -> Response:
        try:
            first = await until_disconnected(request, _first_piece(stream))
        except BaseException:
            await stream.aclose()
            raise

        def on_error(exc: Exception) -> bytes:
            if isinstance(exc, HostlerError):
                error = from_hostler(exc, no_capacity_retry_s=self.settings.no_capacity_retry_s)
            else:
                error = ApiError(500, f"{type(exc).__name__}: {exc}", type="server_error", code="internal")
            return event(error.body())

        return EventStream(chunks.render(stream, first), stream.aclose, on_error)


async def _first_piece(stream: AsyncStream) -> str | None:
    """The first text piece, or None when the job ended without any text."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


class _Chunks:
    """How one kind of completion spells its stream chunks."""

    kind = ""

    def __init__(self, ids: shapes.Ids, include_usage: bool) -> None:
        self.ids = ids
        self.include_usage = include_usage

    def opening(self) -> list[dict[str, Any]]:
        return []

    def piece(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def closing(self, result: CompletionResult | None) -> dict[str, Any]:
        raise NotImplementedError

    def ending(self, result: CompletionResult | None) -> list[dict[str, Any]]:
        """The chunks after the last piece of text, the closing one last."""
        return [self.closing(result)]

    def _with_usage(self, chunk: dict[str, Any]) -> bytes:
        # With include_usage, OpenAI sends `usage: null` on every chunk but the last.
        return event({**chunk, "usage": None} if self.include_usage else chunk)

    async def render(self, stream: AsyncStream, first: str | None) -> AsyncIterator[bytes]:
        # What is ready together goes out as one write: each write to a local socket costs
        # about as much CPU as building the chunk, on both ends of the connection.
        opening = [self._with_usage(chunk) for chunk in self.opening()]
        if first:
            opening.append(self._with_usage(self.piece(first)))
        if opening:
            yield b"".join(opening)
        async for text in stream:
            if text:
                yield self._with_usage(self.piece(text))
        ending = [self._with_usage(chunk) for chunk in self.ending(stream.result)]
        if self.include_usage and stream.result is not None:
            ending.append(event(shapes.usage_chunk(self.ids, self.kind, stream.result)))
        yield b"".join([*ending, DONE])


class _ChatChunks(_Chunks):
    kind = "chat.completion.chunk"

    def opening(self) -> list[dict[str, Any]]:
        return [shapes.chat_chunk(self.ids, {"role": "assistant", "content": ""})]

    def piece(self, text: str) -> dict[str, Any]:
        return _with_logprobs(shapes.chat_chunk(self.ids, {"content": text}), chat_logprobs(_logprobs(text)))

    def closing(self, result: CompletionResult | None) -> dict[str, Any]:
        return shapes.chat_chunk(self.ids, {}, _finish_reason(result))

    def ending(self, result: CompletionResult | None) -> list[dict[str, Any]]:
        calls = result.tool_calls if result is not None else []
        deltas = [shapes.chat_chunk(self.ids, delta) for delta in shapes.tool_call_deltas(calls)]
        return [*deltas, self.closing(result)]


class _TextChunks(_Chunks):
    kind = "text_completion"

    def __init__(self, ids: shapes.Ids, include_usage: bool) -> None:
        super().__init__(ids, include_usage)
        self._offset = 0  # where this piece starts in the whole text (logprobs' text_offset)

    def piece(self, text: str) -> dict[str, Any]:
        chunk = _with_logprobs(shapes.text_chunk(self.ids, text), completion_logprobs(_logprobs(text), self._offset))
        self._offset += len(text)
        return chunk

    def closing(self, result: CompletionResult | None) -> dict[str, Any]:
        return shapes.text_chunk(self.ids, "", _finish_reason(result))


def _logprobs(text: str) -> tuple[TokenLogprob, ...] | None:
    """A streamed piece's token logprobs (None when the request asked for none)."""
    return text.logprobs if isinstance(text, Piece) else None


def _with_logprobs(chunk: dict[str, Any], logprobs: dict[str, Any] | None) -> dict[str, Any]:
    chunk["choices"][0]["logprobs"] = logprobs
    return chunk


def _finish_reason(result: CompletionResult | None) -> str:
    # None: the stream ended without a result (it cannot, but a chunk must still close it).
    return finish_reason(result) if result is not None else "stop"
