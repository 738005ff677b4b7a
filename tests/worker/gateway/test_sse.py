"""How a streamed answer goes onto the connection: what is ready together leaves in one write.

Each ASGI body message is one write to the socket, and on a machine whose cores the engine
keeps busy every write costs the gateway and its client a wakeup. These tests drive the
EventStream and the chat chunk renderer with a recording `send`, no server needed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hostler.worker.gateway.sse import DONE, EventStream, event

Message = dict[str, Any]


async def _never_disconnects() -> Message:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


def _sent(chunks: AsyncIterator[bytes], on_error: Any = None) -> list[Message]:
    sent: list[Message] = []
    closed: list[bool] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def close() -> None:
        closed.append(True)

    response = EventStream(chunks, close, on_error or (lambda exc: event({"error": str(exc)})))
    asyncio.run(asyncio.wait_for(response({"type": "http"}, _never_disconnects, send), 10))
    assert closed == [True], "the source is closed once the stream ends"
    return sent


def _bodies(sent: list[Message]) -> list[tuple[bytes, bool]]:
    assert sent[0]["type"] == "http.response.start"
    return [(m["body"], m["more_body"]) for m in sent[1:]]


def test_the_end_of_the_body_leaves_with_done() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield event({"n": 1})
        yield event({"n": 2})
        yield event({"end": True}) + DONE

    bodies = _bodies(_sent(chunks()))
    assert bodies == [(event({"n": 1}), True), (event({"n": 2}), True), (event({"end": True}) + DONE, False)]


def test_a_source_without_done_still_ends_the_body() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield event({"n": 1})

    assert _bodies(_sent(chunks())) == [(event({"n": 1}), True), (b"", False)]


def test_a_chunk_after_done_is_still_sent_in_order() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield DONE
        yield event({"late": True})

    assert _bodies(_sent(chunks())) == [(DONE, True), (event({"late": True}), True), (b"", False)]


def test_an_error_after_the_headers_is_the_last_event() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield event({"n": 1})
        raise RuntimeError("engine fell over")

    bodies = _bodies(_sent(chunks()))
    assert bodies == [(event({"n": 1}), True), (event({"error": "engine fell over"}), False)]


class _Stream:
    """What the renderer reads of an AsyncStream: text pieces, then the result."""

    def __init__(self, pieces: list[str]) -> None:
        self._pieces = iter(pieces)
        self.result = None

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            raise StopAsyncIteration from None


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_chat_stream_opens_with_its_first_piece_and_closes_in_one_write(include_usage: bool) -> None:
    from hostler.worker.gateway import shapes
    from hostler.worker.gateway.completions import _ChatChunks

    renderer = _ChatChunks(shapes.Ids("chatcmpl", "m"), include_usage)

    async def collect() -> list[bytes]:
        stream: Any = _Stream([" world", "!"])
        return [chunk async for chunk in renderer.render(stream, "Hello")]

    writes = asyncio.run(collect())
    assert len(writes) == 4, "opening with the first piece, two pieces, the closing with [DONE]"
    first = [json.loads(line[len(b"data: ") :]) for line in writes[0].split(b"\n\n") if line]
    assert [c["choices"][0]["delta"] for c in first] == [{"role": "assistant", "content": ""}, {"content": "Hello"}]
    assert writes[-1].endswith(DONE) and writes[-1].count(b"data: ") == 2
    assert b'"finish_reason":"stop"' in writes[-1]
