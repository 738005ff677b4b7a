"""What the asyncio client hands out: a streamed job's pieces, and a submitted job's handle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import redis.asyncio
from hostler.schemas import JobResult

from . import _reads as reads
from ._async_events import AsyncFollowed
from ._core import HandleBase
from ._errors import Timeout
from ._follow import not_finished
from ._pieces import Piece, Pieces

if TYPE_CHECKING:
    from ._async import AsyncClient


class AsyncStream(Pieces, AbstractAsyncContextManager["AsyncStream"]):
    """A streamed job's text pieces: `async for piece in stream`; aclose() stops waiting."""

    def __init__(self, followed: AsyncFollowed) -> None:
        super().__init__(followed.job_id)
        self._followed = followed
        self._pieces = self._generate()

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Piece:
        return await self._pieces.__anext__()

    async def _generate(self) -> AsyncGenerator[Piece, None]:
        try:
            async for event in self._followed.events():
                piece = self._text.piece(event)
                if piece is not None:
                    yield piece
        finally:
            await self._followed.aclose()

    async def aclose(self) -> None:
        await self._pieces.aclose()
        await self._followed.aclose()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncJobHandle(HandleBase["AsyncClient"]):
    """A submitted job, from asyncio: status, result, stream, cancel; see JobHandle."""

    client: AsyncClient

    @property
    def connection(self) -> redis.asyncio.Redis:
        return self.client.connection

    async def status(self) -> str:
        """queued, started, finished, failed or canceled ('missing' once its record expired)."""
        return await self.client._do(reads.job_status(self.id))

    async def result(self, timeout: float = 600.0) -> JobResult:
        """Waits for the job's end; returns its result or raises JobFailed (or Timeout)."""
        async with contextlib.aclosing(await self.client._follow(self.id, timeout)) as followed:
            try:
                return await followed.result()
            except Timeout:
                raise not_finished(self.id, timeout, await self.status()) from None

    async def stream(self, timeout: float = 600.0) -> AsyncIterator[str]:
        """The job's text as it is made (for a job submitted with stream=True; otherwise the
        whole text once it ends). Pieces published before this call come as one piece."""
        async with AsyncStream(await self.client._follow(self.id, timeout)) as stream:
            async for piece in stream:
                yield piece

    async def cancel(self) -> bool:
        """Cancels the job if it is still waiting; False if a worker has already taken it."""
        # rq's registries write through a sync connection; a cancel is rare, so a thread is fine.
        return await asyncio.to_thread(self.client._cancel, self.id, self.model)
