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
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import tree_cpu  # noqa: E402
from bench_serving import GATEWAY, QUEUE, WARM_UP, Chats, Reply, Target, _self_cpu, closed_loop, hostler_target, prompts  # noqa: E402
from hostler.worker.serving.events import DEFAULT_STREAM_INTERVAL_S, STREAM_INTERVAL_ENV  # noqa: E402


async def drive(target: Target, chats: Chats, clients: int) -> tuple[float, list[Reply | None]]:
    async with target.asker(chats) as ask:
        return await closed_loop(ask, len(chats), clients, 300)


def warm(target: Target, timeout: float = 180) -> None:
    """Until a request succeeds: the model registers and loads on the first one."""
    deadline = time.monotonic() + timeout
    while not any(asyncio.run(drive(target, prompts(2, WARM_UP), 1))[1]):
        if time.monotonic() > deadline:
            raise RuntimeError("the stack did not answer within its start timeout")
        time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--requests", type=int, default=32, help="Requests per run (default 32).")
    parser.add_argument("--via", choices=("queue", "gateway"), default="queue")
    default_ms = DEFAULT_STREAM_INTERVAL_S * 1000
    parser.add_argument(
        "--b-ms", type=float, default=default_ms, help=f"B's interval in ms (default {default_ms:g}, hostler's)."
    )
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    from hostler.worker.models.fetch import SMOLLM2, fetch

    model = fetch(SMOLLM2, quiet=True)
    intervals = {"A": 0.0, "B": args.b_ms}
    env = STREAM_INTERVAL_ENV
    print(f"A: {env}=0, B: {env}={args.b_ms:g}; via {args.via}; {args.requests} chats per run, clients {clients}")
    tokens_s: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-interval-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        row = GATEWAY if args.via == "gateway" else QUEUE
        stacks = {
            k: hostler_target(stack, tmp, model, row, k.lower(), 64, 180, {env: f"{ms:g}"})
            for k, ms in intervals.items()
        }
        for target in stacks.values():
            warm(target)
        start = 0
        for r in range(args.rounds):
            for n in clients:
                chats = prompts(args.requests, start)
                start += args.requests
                for name in "AB" if r % 2 == 0 else "BA":
                    target = stacks[name]
                    before = (tree_cpu(target.pids), _self_cpu())
                    seconds, replies = asyncio.run(drive(target, chats, n))
                    ok = [reply for reply in replies if reply is not None]
                    tokens = sum(reply.usage or 0 for reply in ok)  # both stacks count alike
                    tps = tokens / seconds
                    tokens_s.setdefault((name, n), []).append(tps)
                    client_ms = 1000 * (_self_cpu() - before[1]) / max(tokens, 1)
                    server_ms = 1000 * (tree_cpu(target.pids) - before[0]) / max(tokens, 1)
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
