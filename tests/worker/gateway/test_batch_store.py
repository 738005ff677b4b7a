"""The Batch API's Redis side on a real Redis, without a gateway: upload limits, first writer wins,
status changes under WATCH, and leases that lapse and are taken over."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio
from hostler.schemas import BatchObject, Keys
from hostler.worker.gateway.batch_leases import BatchLeases
from hostler.worker.gateway.batch_store import BatchStore, FileStore
from hostler.worker.gateway.errors import ApiError


def files_of(connection: redis.asyncio.Redis) -> FileStore:
    return FileStore(connection, Keys(), max_file_bytes=100, max_files=2, max_bytes=150)


def test_uploads_are_bounded_by_size_count_and_total_bytes_and_deleting_frees_room(redis_url: str) -> None:
    async def main() -> None:
        async with redis.asyncio.Redis.from_url(redis_url) as connection:
            files = files_of(connection)
            with pytest.raises(ApiError, match="101 bytes, over the limit of 100") as big:
                await files.upload("big", b"x" * 101)
            assert (big.value.status, big.value.code) == (413, "file_too_large")
            first = await files.upload("a", b"a" * 80)
            with pytest.raises(ApiError, match="150 bytes for all files") as full:
                await files.upload("b", b"b" * 80)
            assert full.value.code == "storage_full"
            second = await files.upload("b", b"b" * 60)
            with pytest.raises(ApiError, match="--max-files 2") as many:
                await files.upload("c", b"c")
            assert many.value.code == "too_many_files"
            assert {f.id for f in (await files.page(None, 10)).data} == {first.id, second.id}
            await files.delete(first.id)
            with pytest.raises(ApiError, match="no file") as gone:
                await files.content(first.id)
            assert gone.value.status == 404
            assert int(await connection.get(Keys().files_bytes) or 0) == 60
            third = await files.upload("c", b"c" * 90)
            assert await files.content(third.id) == b"c" * 90

    asyncio.run(main())


def test_a_result_line_is_written_once_and_status_changes_see_the_latest_record(redis_url: str) -> None:
    async def main() -> None:
        async with redis.asyncio.Redis.from_url(redis_url) as connection:
            store = BatchStore(connection, Keys())
            batch = BatchObject(id="batch_x", endpoint="/v1/chat/completions", input_file_id="f", created_at=1)
            await store.create(batch)
            assert await store.record("batch_x", output=True, field="c1", line="first", tokens=(3, 4))
            assert not await store.record("batch_x", output=True, field="c1", line="second", tokens=(3, 4))
            out, _ = await store.results("batch_x")
            seen = await store.get("batch_x")
            assert out == {"c1": "first"} and seen.request_counts.completed == 1
            assert seen.usage is not None and (seen.usage.input_tokens, seen.usage.output_tokens) == (3, 4)

            def cancel(stored: BatchObject) -> BatchObject | None:
                return stored.model_copy(update={"status": "cancelled"}) if stored.status == "validating" else None

            assert (await store.update("batch_x", cancel)) is not None
            assert await store.active() == []
            again = await store.update("batch_x", cancel)
            assert again is not None and again.status == "cancelled"
            assert await store.update("batch_nothing", cancel) is None

    asyncio.run(main())


class _Run:
    """A stand-in for BatchRun: records that it ran, and runs until canceled."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def drive(self) -> None:
        self.log.append(self.name)
        await asyncio.Event().wait()

    async def watch(self) -> None:
        pass


def test_a_lapsed_lease_is_taken_over_and_a_released_one_at_once(redis_url: str) -> None:
    async def main() -> None:
        async with redis.asyncio.Redis.from_url(redis_url) as connection:
            keys = Keys()
            await connection.sadd(keys.api_batches_active, "batch_a")
            ran: list[str] = []

            def leases(name: str) -> BatchLeases:
                def make_run(batch_id: str) -> Any:
                    return _Run(name, ran)

                return BatchLeases(connection, keys, make_run, lease_s=0.5, look_every_s=0.05)

            first, second = leases("first"), leases("second")
            await first.look()
            await second.look()
            assert ran == ["first"] and not second.running
            # The first stops renewing (as a SIGKILLed gateway would): the lease lapses, the second takes it.
            await asyncio.sleep(0.7)
            await second.look()
            await asyncio.sleep(0)
            assert ran == ["first", "second"]
            # The first notices at its next look that the lease is someone else's and stops its run.
            await first.look()
            await asyncio.sleep(0)
            assert first.running["batch_a"][1].cancelled()
            # A gateway that stops lets go at once: the first takes it back without waiting for a TTL.
            await second.close()
            await first.look()  # reaps its own canceled run
            await first.look()
            await asyncio.sleep(0)
            assert ran == ["first", "second", "first"]
            await first.close()

    asyncio.run(main())
