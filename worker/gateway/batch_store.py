"""Batch API files and batches in Redis, the one store every gateway can read.

Gateways keep no state of their own and may run on different machines in front of one Redis,
so a file uploaded through one must be readable through any other, and a batch accepted by one
must be resumable by another: Redis is the only thing they all share. That puts files in
Redis memory, so uploads are bounded three ways (the size of one file, how many are kept, and
their bytes together), each checked in one Lua script with the write, so two gateways cannot
both squeeze under a limit. A batch's output and error files are made from its results when
it ends and expire with it; they do not count against the upload limits.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import redis.asyncio
from hostler.schemas import BatchObject, BatchPage, BatchUsage, FileObject, FilePage, Keys, as_text

from .errors import ApiError

# Finished batches, their output and error files are kept this long (OpenAI keeps them 30 days).
KEEP_FINISHED_S = 30 * 24 * 3600

# KEYS: the files set, the bytes counter, the file's hash. ARGV: id, created_at, meta JSON,
# content, size, most files, most bytes. Reply: {1} stored, or {0, what, current}.
_PUT_UPLOAD = """
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[6]) then return {0, 'files', count} end
local total = tonumber(redis.call('GET', KEYS[2]) or '0')
if total + tonumber(ARGV[5]) > tonumber(ARGV[7]) then return {0, 'bytes', total} end
redis.call('HSET', KEYS[3], 'meta', ARGV[3], 'content', ARGV[4], 'counted', ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('INCRBY', KEYS[2], ARGV[5])
return {1}
"""

# KEYS: the files set, the bytes counter, the file's hash. ARGV: id. Reply: 1 deleted, 0 none.
_DELETE = """
local counted = redis.call('HGET', KEYS[3], 'counted')
local gone = redis.call('DEL', KEYS[3])
if gone == 1 and counted then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DECRBY', KEYS[2], counted)
end
return gone
"""

# KEYS: the results hash, the usage hash. ARGV: field, line, input tokens, output tokens.
# The first writer of a field wins, so a request two runners both saw end is written once.
_RECORD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'input', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'output', ARGV[4])
return 1
"""


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


class FileStore:
    """Uploaded files and batch outputs: metadata and bytes in one hash per file."""

    def __init__(
        self, connection: redis.asyncio.Redis, keys: Keys, *, max_file_bytes: int, max_files: int, max_bytes: int
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.max_bytes = max_bytes

    async def upload(self, filename: str, content: bytes) -> FileObject:
        """Stores a batch input file, or raises 413 naming the limit it would pass."""
        if len(content) > self.max_file_bytes:
            raise ApiError(
                413,
                f"file {filename!r} is {len(content)} bytes, over the limit of {self.max_file_bytes} bytes per file "
                "(hostler gateway --max-file-bytes)",
                param="file",
                code="file_too_large",
            )
        meta = FileObject(id=new_id("file-"), bytes=len(content), created_at=now(), filename=filename, purpose="batch")
        keys = [self.keys.files, self.keys.files_bytes, self.keys.file(meta.id)]
        args: list[str | int | bytes] = [meta.id, meta.created_at, meta.model_dump_json(), content, len(content),
                                         self.max_files, self.max_bytes]  # fmt: skip
        reply = await self.connection.eval(_PUT_UPLOAD, len(keys), *keys, *args)
        if int(reply[0]) == 1:
            return meta
        what, current = as_text(reply[1]), int(reply[2])
        if what == "files":
            message = (
                f"{current} files are stored, the limit (hostler gateway --max-files {self.max_files}); "
                "delete some (DELETE /v1/files/{id}) first"
            )
            raise ApiError(413, message, param="file", code="too_many_files")
        message = (
            f"stored files hold {current} bytes; {len(content)} more would pass the limit of {self.max_bytes} "
            "bytes for all files together (hostler gateway --max-stored-bytes); delete some first"
        )
        raise ApiError(413, message, param="file", code="storage_full")

    async def put_output(self, file_id: str, filename: str, content: bytes) -> FileObject:
        """A batch's output or error file; it expires with the batch and counts against no limit."""
        meta = FileObject(
            id=file_id,
            bytes=len(content),
            created_at=now(),
            filename=filename,
            purpose="batch_output",
            expires_at=now() + KEEP_FINISHED_S,
        )
        async with self.connection.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.file(file_id), mapping={"meta": meta.model_dump_json(), "content": content})
            pipe.expire(self.keys.file(file_id), KEEP_FINISHED_S)
            await pipe.execute()
        return meta

    async def get(self, file_id: str) -> FileObject:
        raw = await self.connection.hget(self.keys.file(file_id), "meta")
        if raw is None:
            raise _no_file(file_id)
        return FileObject.model_validate_json(raw)

    async def content(self, file_id: str) -> bytes:
        raw = await self.connection.hget(self.keys.file(file_id), "content")
        if raw is None:
            raise _no_file(file_id)
        return raw if isinstance(raw, bytes) else raw.encode()

    async def delete(self, file_id: str) -> None:
        keys = [self.keys.files, self.keys.files_bytes, self.keys.file(file_id)]
        deleted = await self.connection.eval(_DELETE, len(keys), *keys, file_id)
        if not deleted:
            raise _no_file(file_id)

    async def page(self, after: str | None, limit: int) -> FilePage:
        """Uploaded files, newest first, from the one after `after`."""
        ids = await _page_ids(self.connection, self.keys.files, after, limit)
        async with self.connection.pipeline(transaction=False) as pipe:
            for file_id in ids[:limit]:
                pipe.hget(self.keys.file(file_id), "meta")
            metas = await pipe.execute()
        data = [FileObject.model_validate_json(m) for m in metas if m is not None]
        return FilePage(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=len(ids) > limit,
        )


def _no_file(file_id: str) -> ApiError:
    return ApiError(404, f"no file {file_id!r} (never uploaded, deleted, or expired)", param="file_id",
                    type="not_found_error", code="file_not_found")  # fmt: skip


async def _page_ids(connection: redis.asyncio.Redis, zset: str, after: str | None, limit: int) -> list[str]:
    """Up to limit + 1 ids of a set ordered by time, newest first, after the given one."""
    start = 0
    if after is not None:
        rank = await connection.zrevrank(zset, after)
        if not isinstance(rank, int):  # None: not in the set
            raise ApiError(400, f"after={after!r} names nothing in this list", param="after", code="invalid_value")
        start = rank + 1
    return [as_text(i) for i in await connection.zrevrange(zset, start, start + limit)]


class BatchStore:
    """Batch objects, and each batch's results: one line per custom_id, the first writer wins."""

    def __init__(self, connection: redis.asyncio.Redis, keys: Keys) -> None:
        self.connection = connection
        self.keys = keys

    async def create(self, batch: BatchObject) -> None:
        async with self.connection.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.api_batch(batch.id), batch.model_dump_json())
            pipe.zadd(self.keys.api_batches, {batch.id: batch.created_at})
            pipe.sadd(self.keys.api_batches_active, batch.id)
            await pipe.execute()

    async def get(self, batch_id: str) -> BatchObject:
        """The batch with its request counts and usage as they are now; 404 if there is none."""
        raw = await self.connection.get(self.keys.api_batch(batch_id))
        if raw is None:
            raise ApiError(404, f"no batch {batch_id!r} (never created, or expired)", param="batch_id",
                           type="not_found_error", code="batch_not_found")  # fmt: skip
        batch = BatchObject.model_validate_json(raw)
        return batch if batch.final else await self.with_progress(batch)

    async def with_progress(self, batch: BatchObject) -> BatchObject:
        async with self.connection.pipeline(transaction=False) as pipe:
            pipe.hlen(self.keys.api_batch_output(batch.id))
            pipe.hlen(self.keys.api_batch_errors(batch.id))
            pipe.hgetall(self.keys.api_batch_usage(batch.id))
            completed, failed, usage = await pipe.execute()
        counts = batch.request_counts.model_copy(update={"completed": int(completed), "failed": int(failed)})
        tokens = {as_text(k): int(v) for k, v in usage.items()}
        used = BatchUsage(
            input_tokens=tokens.get("input", 0),
            output_tokens=tokens.get("output", 0),
            total_tokens=tokens.get("input", 0) + tokens.get("output", 0),
        )
        return batch.model_copy(update={"request_counts": counts, "usage": used})

    async def update(self, batch_id: str, change: Callable[[BatchObject], BatchObject | None]) -> BatchObject | None:
        """Applies change to the stored batch atomically (retried if another gateway wrote it
        meanwhile); change returns None to leave it as it is. Returns what is stored after."""
        key = self.keys.api_batch(batch_id)
        async with self.connection.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    batch = BatchObject.model_validate_json(raw)
                    changed = change(batch)
                    if changed is None:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return batch
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, changed.model_dump_json(), keepttl=True)
                    if changed.final:
                        pipe.srem(self.keys.api_batches_active, batch_id)
                    await pipe.execute()
                    return changed
                except redis.WatchError:
                    continue

    async def page(self, after: str | None, limit: int) -> BatchPage:
        ids = await _page_ids(self.connection, self.keys.api_batches, after, limit)
        batches = []
        for batch_id in ids[:limit]:
            try:
                batches.append(await self.get(batch_id))
            except ApiError:
                await self.connection.zrem(self.keys.api_batches, batch_id)  # expired meanwhile
        return BatchPage(
            data=batches,
            first_id=batches[0].id if batches else None,
            last_id=batches[-1].id if batches else None,
            has_more=len(ids) > limit,
        )

    async def active(self) -> list[str]:
        return sorted(as_text(i) for i in await self.connection.smembers(self.keys.api_batches_active))

    async def record(self, batch_id: str, *, output: bool, field: str, line: str, tokens: tuple[int, int]) -> bool:
        """Writes one result line unless that request already has one; True if this one counted."""
        results = self.keys.api_batch_output(batch_id) if output else self.keys.api_batch_errors(batch_id)
        keys = [results, self.keys.api_batch_usage(batch_id)]
        return bool(await self.connection.eval(_RECORD, 2, *keys, field, line, *tokens))

    async def results(self, batch_id: str) -> tuple[dict[str, str], dict[str, str]]:
        """(custom_id -> output line, error key -> error line) written so far."""
        async with self.connection.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.api_batch_output(batch_id))
            pipe.hgetall(self.keys.api_batch_errors(batch_id))
            out, err = await pipe.execute()
        return _texts(out), _texts(err)

    async def retire(self, batch_id: str) -> None:
        """After a batch ended: its result hashes go (the files hold them), the record expires."""
        async with self.connection.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.api_batch_output(batch_id), self.keys.api_batch_errors(batch_id))
            pipe.delete(self.keys.api_batch_usage(batch_id))
            pipe.expire(self.keys.api_batch(batch_id), KEEP_FINISHED_S)
            pipe.srem(self.keys.api_batches_active, batch_id)
            await pipe.execute()


def _texts(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {as_text(k): as_text(v) for k, v in raw.items()}
