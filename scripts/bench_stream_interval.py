#!/usr/bin/env python3
"""Benchmark: the stream interval's effect on tokens/s, A/B on two hostler stacks in one run.

Two stacks (an embedded Redis and `hostler up` each, plus `hostler gateway` with --via gateway)
differ only in HOSTLER_STREAM_INTERVAL_MS: A sends every piece as it comes (0), B uses the
default (50 ms; --b-ms to try another). Each round sends both the same new chat requests (those
of bench_serving.py: one-sentence summaries, 64 max tokens, temperature 0, streamed), first to
one stack then to the other, the order reversed every round, at each client count. A machine
that speeds up or slows down over minutes moves both runs of a round together, so the script
prints the ratio B / A of every round and their median.

    python scripts/bench_stream_interval.py [--rounds 6] [--clients 1,8] [--via queue|gateway]

About 5 minutes on 2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import free_port, process, tree_cpu, wait_http  # noqa: E402
from bench_serving import MODEL, WARM_UP, Ask, Chats, Reply, _self_cpu, closed_loop, openai_asker, prompts, queue_asker  # noqa: E402

ENV = "HOSTLER_STREAM_INTERVAL_MS"


@contextlib.contextmanager
def environment(extra: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(extra)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start_stack(stack: contextlib.ExitStack, tmp: Path, name: str, interval_ms: float, via: str, model: Path):
    """One stack with HOSTLER_STREAM_INTERVAL_MS set for it; returns its asker factory and pids."""
    from hostler.worker.embedded_redis import EmbeddedRedis

    models = tmp / f"models-{name}"
    models.mkdir()
    (models / f"{MODEL}.gguf").symlink_to(model)
    server = stack.enter_context(EmbeddedRedis())
    hostler = [sys.executable, "-m", "hostler.worker"]
    pids = [server.process.pid] if server.process else []
    with environment({ENV: f"{interval_ms:g}"}):
        up_cmd = [*hostler, "up", "--models", str(models), "--no-demo", "--host-id", f"bench-{name}"]
        pids.append(stack.enter_context(process(up_cmd, tmp / f"up-{name}.log", server.url)).pid)
        if via == "gateway":
            port = free_port()
            log = tmp / f"gateway-{name}.log"
            gateway = stack.enter_context(process([*hostler, "gateway", "--port", str(port)], log, server.url))
            wait_http(f"http://127.0.0.1:{port}/health", "gateway", gateway, log, timeout=180)
            pids.append(gateway.pid)
            url = f"http://127.0.0.1:{port}/v1"
            return (lambda chats: openai_asker(url, chats, 64)), pids
    return (lambda chats: queue_asker(server.url, chats, 64)), pids


async def drive(asker, chats: Chats, clients: int) -> tuple[float, list[Reply | None]]:
    ask: Ask
    async with asker(chats) as ask:
        return await closed_loop(ask, len(chats), clients, 300)


def warm(asker, timeout: float = 180) -> None:
    """Until a request succeeds: the model registers and loads on the first one."""
    deadline = time.monotonic() + timeout
    while not any(asyncio.run(drive(asker, prompts(2, WARM_UP), 1))[1]):
        if time.monotonic() > deadline:
            raise RuntimeError("the stack did not answer within its start timeout")
        time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--requests", type=int, default=32, help="Requests per run (default 32).")
    parser.add_argument("--via", choices=("queue", "gateway"), default="queue")
    parser.add_argument("--b-ms", type=float, default=50.0, help="B's interval in ms (default 50, the default).")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    from hostler.worker.models.fetch import SMOLLM2, fetch

    model = fetch(SMOLLM2, quiet=True)
    intervals = {"A": 0.0, "B": args.b_ms}
    print(f"A: {ENV}=0, B: {ENV}={args.b_ms:g}; via {args.via}; {args.requests} chats per run, clients {clients}")
    tokens_s: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-interval-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        stacks = {k: start_stack(stack, tmp, k.lower(), ms, args.via, model) for k, ms in intervals.items()}
        for asker, _ in stacks.values():
            warm(asker)
        start = 0
        for r in range(args.rounds):
            for n in clients:
                chats = prompts(args.requests, start)
                start += args.requests
                for name in "AB" if r % 2 == 0 else "BA":
                    asker, pids = stacks[name]
                    before = (tree_cpu(pids), _self_cpu())
                    seconds, replies = asyncio.run(drive(asker, chats, n))
                    ok = [reply for reply in replies if reply is not None]
                    tokens = sum(reply.tokens or 0 for reply in ok)
                    tps = tokens / seconds
                    tokens_s.setdefault((name, n), []).append(tps)
                    client_ms = 1000 * (_self_cpu() - before[1]) / max(tokens, 1)
                    server_ms = 1000 * (tree_cpu(pids) - before[0]) / max(tokens, 1)
                    print(
                        f"round {r + 1} {name} x{n}: {tps:.1f} tok/s, {len(replies) - len(ok)} failed, "
                        f"CPU per token: server {server_ms:.2f} ms, client {client_ms:.2f} ms",
                        flush=True,
                    )
    print()
    for n in clients:
        a, b = tokens_s[("A", n)], tokens_s[("B", n)]
        ratios = [y / x for x, y in zip(a, b, strict=True)]
        each = ", ".join(f"{q:.2f}" for q in ratios)
        print(
            f"{n} client(s): B / A per round {each}; median {statistics.median(ratios):.2f} "
            f"(A median {statistics.median(a):.1f} tok/s, B median {statistics.median(b):.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
