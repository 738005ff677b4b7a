#!/usr/bin/env python3
"""Benchmark: concurrent chat requests through any OpenAI-compatible server, with the openai SDK.

Driver mode sends N one-sentence-summary requests, C at a time, to a base URL and prints
requests per minute and aggregate generated tokens per second (from each reply's usage):

    python scripts/bench_gateway.py --base-url http://127.0.0.1:8000/v1 --model smollm2-135m

Compare mode runs, in one run, hostler (an embedded Redis, `hostler up`, `hostler gateway`)
and llama-cpp-python's own server (`python -m llama_cpp.server`, from the `bench` extra) on
the same GGUF (SmolLM2-135M-Instruct from hostler.worker.models.fetch), with the same prompts,
max_tokens, temperature 0, context size and threads (llama.cpp's defaults, or --threads on
both), and prints both and their ratio. A third row sends the same requests through
hostler's AsyncClient straight to Redis, so the ratio to it is what HTTP adds. All stay up;
rounds rotate which goes first, and only one is driven at a time (they would compete for
the same cores). Each run also records the CPU other programs used meanwhile, in cores: on
a shared machine that is the noise of the figures.

    python scripts/bench_gateway.py --compare [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil

MODEL = "smollm2-135m"
N_CTX = 2048

# Short passages; each request asks for a one-sentence summary of one of them.
PASSAGES = (
    "The printing press, developed in the fifteenth century, made books cheaper and spread literacy across Europe.",
    "Honeybees communicate the location of flowers to their hive mates through a movement called the waggle dance.",
    "A message queue lets one program hand work to another without waiting for it to finish.",
    "The Great Barrier Reef is the largest coral reef system in the world and is visible from space.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen inside plant leaves.",
    "The Roman aqueducts carried fresh water over long distances using only a gentle downhill slope.",
    "Regular exercise improves sleep, mood and heart health, even in short sessions of ten minutes.",
    "The first successful powered airplane flight lasted twelve seconds and covered about thirty-seven metres.",
    "Volcanic soil is often very fertile, which is why farms are found on the slopes of active volcanoes.",
    "Compound interest means that interest is earned on previously earned interest as well as on the principal.",
    "Octopuses have three hearts and blue blood, and each of their arms can taste what it touches.",
    "The Silk Road was a network of trade routes that connected China with the Mediterranean for centuries.",
    "Solar panels convert light directly into electricity using layers of semiconducting silicon.",
    "A good night's sleep helps the brain store memories and clear out waste products.",
    "The Amazon rainforest produces a large share of the world's oxygen and holds countless species.",
    "Version control systems record every change to a codebase so that teams can work on it together.",
    "Glaciers carve valleys as they slowly move, pushing rocks and soil ahead of them.",
    "The human eye can distinguish around ten million different colours under good lighting.",
    "Bread rises because yeast ferments sugar and releases carbon dioxide gas into the dough.",
    "Lighthouses once relied on keepers who trimmed wicks and wound clockwork through the night.",
    "The metric system was introduced in France in the 1790s to replace many local units of measure.",
    "Electric cars have fewer moving parts than petrol cars, so they usually need less maintenance.",
    "Whales sing complex songs that can travel hundreds of kilometres through the ocean.",
    "Public libraries lend books for free and often offer classes, internet access and quiet study space.",
    "The Moon's gravity causes the tides, raising the sea level twice a day on most coasts.",
    "Caching stores the results of expensive work so that later requests can be answered quickly.",
    "Tea was first drunk in China and later became a daily ritual in Britain and India.",
    "Bamboo is one of the fastest-growing plants and can grow almost a metre in a single day.",
    "Vaccines train the immune system to recognise a germ without causing the disease itself.",
    "The Sahara was once green, with lakes and grasslands, about six thousand years ago.",
    "Recycling aluminium saves most of the energy needed to make new aluminium from ore.",
    "Chess originated in India around the sixth century before spreading to Persia and Europe.",
)


def messages(passage: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Summarize in one sentence: {passage}"}]


@dataclass
class Run:
    name: str
    seconds: float
    completed: int
    failed: int
    completion_tokens: int
    texts: list[str]
    other_cores: float | None = None

    @property
    def requests_per_min(self) -> float:
        return 60.0 * self.completed / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds

    def line(self) -> str:
        noise = f", other programs {self.other_cores:.2f} cores" if self.other_cores is not None else ""
        return (
            f"{self.name:<22} {self.completed:>3} ok {self.failed:>2} failed in {self.seconds:6.1f} s: "
            f"{self.requests_per_min:6.1f} requests/min, {self.tokens_per_s:6.1f} tokens/s{noise}"
        )


Ask = Callable[[int], Awaitable[tuple[str, int]]]


async def _timed(name: str, ask: Ask, requests: int, concurrency: int) -> Run:
    """Runs ask(i) for every request, `concurrency` at a time; one failure does not stop the rest."""
    gate = asyncio.Semaphore(concurrency)
    texts = [""] * requests
    tokens = [0] * requests
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with gate:
            try:
                texts[i], tokens[i] = await ask(i)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                failures += 1
                print(f"  request {i} failed: {exc}", file=sys.stderr)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    return Run(name, time.perf_counter() - started, requests - failures, failures, sum(tokens), texts)


async def drive(
    name: str, base_url: str, model: str, api_key: str, requests: int, concurrency: int, max_tokens: int
) -> Run:
    """Sends `requests` chat requests through the openai SDK, `concurrency` at a time."""
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)

    async def ask(i: int) -> tuple[str, int]:
        reply = await sdk.chat.completions.create(
            model=model,
            messages=messages(PASSAGES[i % len(PASSAGES)]),  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0,
        )
        return reply.choices[0].message.content or "", reply.usage.completion_tokens if reply.usage else 0

    try:
        return await _timed(name, ask, requests, concurrency)
    finally:
        await sdk.close()


async def drive_queue(name: str, redis_url: str, model: str, requests: int, concurrency: int, max_tokens: int) -> Run:
    """The same requests through hostler's AsyncClient straight to Redis: the queue without HTTP."""
    from hostler import AsyncClient

    async with AsyncClient(redis_url) as client:

        async def ask(i: int) -> tuple[str, int]:
            result = await client.chat(
                model, messages(PASSAGES[i % len(PASSAGES)]), max_tokens=max_tokens, temperature=0
            )
            return result.text, result.usage.completion_tokens

        return await _timed(name, ask, requests, concurrency)


# -- compare mode ------------------------------------------------------------------------


def machine_cpu() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def tree_cpu(pids: Sequence[int]) -> float:
    """CPU seconds of these processes and their children (the workers `hostler up` starts)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in (root, *root.children(recursive=True)):
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_http(url: str, what: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready within {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


@contextmanager
def process(
    cmd: list[str], log: Path, redis_url: str | None = None, extra_env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    # A Redis URL goes by environment, never argv: `ps` shows every user a command line.
    env = {**os.environ, **(extra_env or {}), **({"HOSTLER_REDIS_URL": redis_url} if redis_url else {})}
    with log.open("wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


GATEWAY, QUEUE, LLAMA = "hostler gateway", "hostler AsyncClient", "llama_cpp.server"


@dataclass
class Target:
    """One way of sending the requests, and the processes whose CPU is its own."""

    drive: Callable[[int], Run]
    pids: list[int]


def compare(args: argparse.Namespace) -> None:
    from hostler.worker.embedded_redis import EmbeddedRedis
    from hostler.worker.models.fetch import SMOLLM2, fetch

    path = fetch(SMOLLM2, quiet=True)
    hostler = [sys.executable, "-m", "hostler.worker"]
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp_name, EmbeddedRedis() as server:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        (models / f"{MODEL}.gguf").symlink_to(path)
        gateway_port, llama_port = free_port(), free_port()
        up_cmd = [*hostler, "up", "--models", str(models), "--no-demo", "--host-id", "bench"]
        gateway_cmd = [*hostler, "gateway", "--port", str(gateway_port)]
        llama_cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", MODEL]
        llama_cmd += ["--port", str(llama_port), "--n_ctx", str(N_CTX)]
        if args.threads:
            llama_cmd += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
        with (
            process(up_cmd, tmp / "up.log", server.url) as up,
            process(gateway_cmd, tmp / "gateway.log", server.url) as gateway,
            process(llama_cmd, tmp / "llama.log") as llama,
        ):
            gateway_url = f"http://127.0.0.1:{gateway_port}"
            llama_url = f"http://127.0.0.1:{llama_port}/v1"
            wait_http(f"{gateway_url}/health", "hostler gateway", gateway, tmp / "gateway.log")
            wait_http(f"{llama_url}/models", "llama_cpp.server", llama, tmp / "llama.log")
            # Through the gateway's own endpoint: hostler's worker loads with the same threads.
            load = {"n_ctx": N_CTX, **({"n_threads": args.threads} if args.threads else {})}
            loaded = httpx.post(f"{gateway_url}/v1/models/{MODEL}/load", json=load, timeout=300)
            loaded.raise_for_status()
            redis_pids = [server.process.pid] if server.process else []

            def over_http(name: str, url: str) -> Callable[[int], Run]:
                return lambda n: asyncio.run(
                    drive(name, url, MODEL, "unused", n, min(n, args.concurrency), args.max_tokens)
                )

            targets = {
                GATEWAY: Target(over_http(GATEWAY, f"{gateway_url}/v1"), [up.pid, gateway.pid, *redis_pids]),
                QUEUE: Target(
                    lambda n: asyncio.run(
                        drive_queue(QUEUE, server.url, MODEL, n, min(n, args.concurrency), args.max_tokens)
                    ),
                    [up.pid, *redis_pids],
                ),
                LLAMA: Target(over_http(LLAMA, llama_url), [llama.pid]),
            }
            for target in targets.values():
                target.drive(2)  # not timed: warms every path up the same way
            threads = f"{args.threads} thread(s)" if args.threads else "llama.cpp's default threads"
            print(
                f"{args.requests} chat requests ({args.concurrency} concurrent, max_tokens {args.max_tokens}, "
                f"temperature 0) on {path.name}, n_ctx {N_CTX}, {threads}; {os.cpu_count()} cores"
            )
            runs: dict[str, list[Run]] = {name: [] for name in targets}
            for round_no in range(args.rounds):
                order = list(targets) if round_no % 2 == 0 else list(reversed(targets))
                for name in order:
                    target = targets[name]
                    before_ours, before_all = tree_cpu(target.pids) + _self_cpu(), machine_cpu()
                    run = target.drive(args.requests)
                    ours = tree_cpu(target.pids) + _self_cpu() - before_ours
                    run.other_cores = max(0.0, machine_cpu() - before_all - ours) / run.seconds
                    runs[name].append(run)
                    print(f"round {round_no + 1}: {run.line()}")
            summarize(runs)


def _self_cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def summarize(runs: dict[str, list[Run]]) -> None:
    rpm = {name: statistics.median(r.requests_per_min for r in rs) for name, rs in runs.items()}
    tps = {name: statistics.median(r.tokens_per_s for r in rs) for name, rs in runs.items()}
    print("\nmedian over rounds:")
    for name in runs:
        print(f"  {name:<20} {rpm[name]:6.1f} requests/min  {tps[name]:6.1f} tokens/s")
    print(
        f"  {GATEWAY} / {LLAMA}: requests/min {rpm[GATEWAY] / rpm[LLAMA]:.3f}, tokens/s {tps[GATEWAY] / tps[LLAMA]:.3f}"
    )
    print(
        f"  {GATEWAY} / {QUEUE} (what HTTP adds): requests/min {rpm[GATEWAY] / rpm[QUEUE]:.3f}, "
        f"tokens/s {tps[GATEWAY] / tps[QUEUE]:.3f}"
    )
    last = {name: rs[-1].texts for name, rs in runs.items()}
    same_queue = sum(a == b for a, b in zip(last[GATEWAY], last[QUEUE], strict=True))
    same_llama = sum(a == b for a, b in zip(last[GATEWAY], last[LLAMA], strict=True))
    n = len(last[GATEWAY])
    print(f"  temperature-0 replies equal (last round): gateway and AsyncClient {same_queue}/{n}, gateway and")
    print(f"  llama_cpp.server {same_llama}/{n} (the server evaluates prompts on a cached prefix, hostler afresh)")


def missing_server_modules() -> list[str]:
    """What llama-cpp-python's server imports and this environment lacks (its `server` extra)."""
    wanted = ("sse_starlette", "starlette_context", "pydantic_settings", "fastapi", "uvicorn")
    return [name for name in wanted if importlib.util.find_spec(name) is None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="An OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    parser.add_argument("--model", default=MODEL, help="The model name to send.")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "unused"), help="Bearer key.")
    parser.add_argument("--requests", type=int, default=32, help="Requests in all (default 32).")
    parser.add_argument("--concurrency", type=int, default=8, help="Requests in flight at once (default 8).")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (default 64).")
    parser.add_argument("--compare", action="store_true", help="Run hostler and llama_cpp.server and compare.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of each in compare mode (default 3).")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Compare mode: llama.cpp threads (generation and prompt) on both sides.",
    )
    args = parser.parse_args()
    if args.compare:
        missing = missing_server_modules()
        if missing:
            sys.exit(
                f"--compare runs llama_cpp.server, which needs {', '.join(missing)}: "
                "install the bench extra (pip install -e '.[bench]')"
            )
        compare(args)
        return
    if not args.base_url:
        parser.error("give --base-url (driver mode) or --compare")
    run = asyncio.run(
        drive(args.base_url, args.base_url, args.model, args.api_key, args.requests, args.concurrency, args.max_tokens)
    )
    print(run.line())


if __name__ == "__main__":
    main()
