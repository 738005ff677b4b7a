"""The AsyncClient's one pub/sub connection, shared by every job it follows, against a real Redis
whose server drops that connection (as in a failover): jobs that subscribe while it comes back
are subscribed, not refused, and nothing but hostler's own errors reaches a caller."""

from __future__ import annotations

import asyncio

import redis
from hostler.client._async_events import EventHub
from hostler.client._connection import connect_async

ROUNDS = 20
AT_ONCE = 40


def test_jobs_subscribing_while_the_shared_connection_comes_back_are_all_subscribed(
    redis_url: str, connection: redis.Redis
) -> None:
    async def main() -> tuple[list[BaseException], bytes]:
        client = connect_async(redis_url)
        hub = EventHub(client)
        failures: list[BaseException] = []

        async def subscribe(channel: str, delay: float) -> None:
            await asyncio.sleep(delay)
            try:
                await hub.subscribe(channel)
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                failures.append(exc)

        try:
            await hub.subscribe("before")
            for round_ in range(ROUNDS):
                # The server drops the subscribed connection; the reader task and the
                # subscribes spread over the next 0.2 s race to connect it again.
                connection.client_kill_filter(_type="pubsub")
                await asyncio.gather(*(subscribe(f"r{round_}-{i}", 0.005 * i) for i in range(AT_ONCE)))
            last = await hub.subscribe("after")
            connection.publish("after", "still routed")
            message = await asyncio.wait_for(last.get(), 5.0)
        finally:
            await hub.close()
            await client.aclose()
        return failures, message

    failures, message = asyncio.run(main())
    assert failures == [], sorted({f"{type(f).__name__}: {f}" for f in failures})
    assert message == b"still routed"
