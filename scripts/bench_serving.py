#!/usr/bin/env python3
"""Benchmark: hostler against llama.cpp's llama-server and llama-cpp-python's batched example server.

One run serves the same model (SmolLM2-135M-Instruct GGUF, hostler.worker.models.fetch), the same
chat requests (a one-sentence summary of a short paragraph: two of the passages of
bench_gateway.py, each pair used once, so every run sends prompts no server has seen), the same
max_tokens (64) and temperature 0 through:

1. llama.cpp's `llama-server -np 8 -c 8*2048 -t T`, built once from the llama.cpp vendored in the
   installed llama-cpp-python's sdist (scripts/llama_server_build.py; cached in
   ~/.cache/hostler/llama-server-<version>/; the row is skipped, with the reason, where it cannot
   be built);
2. the sdist's batched example server (examples/server/server.py) on the installed llama_cpp,
   n_seq_max 8, the same context and threads;
3. hostler with its defaults (`hostler up`, `hostler gateway`, no load parameters), through the
   gateway with the official openai SDK and through hostler.AsyncClient straight to Redis.

All servers start first and stay up (idle); then, for each client count (1 and 8 by default),
each is driven alone in turn with the same new paragraphs, the order reversed every other round.
A run sends every request, `clients` at a time (closed loop: each client sends its next request
when its last one ended); every request is streamed, so the time to the first content delta
(TTFT) is measured on every one. tokens/s is completion tokens / wall time of the whole run,
the tokens counted from each reply's text with the model's tokenizer, one rule for every server:
llama-server's own usage counts the end-of-generation token as well (one token more per reply
than hostler or OpenAI report; about 4% of these short replies), and the example server sends
none when streaming. Each run also prints the servers' own counts, and the prompt tokens the
server evaluated where it tells (llama-server's usage, less its cached tokens; hostler's worker
reports). CPU per token is the CPU
time of the server's processes (hostler: Redis, `hostler up` and its workers, the gateway), and
apart that of the clients (this process), over the run's completion tokens: on a machine whose
cores the servers saturate, it is what their tokens/s comes down to, and it moves far less with
the neighbours than tokens/s does. Afterwards an in-process
llama-cpp-python run of the first run's prompts, one at a time, gives the TTFT hostler's queue
adds at 1 client.

On a CPU with AMX (amx_int8) ggml's AMX matrix multiply crashes (worker/engines/llama_cpu.py),
so there llama-server runs with --no-repack and the example server and the in-process run load
without extra buffer types, as hostler's worker does; the script prints it.

    python scripts/bench_serving.py [--requests 32] [--clients 1,8] [--threads N] [--rounds 1]

About 3 minutes on 2 cores, 5 with --rounds 3 (plus the one-time build, about 20 minutes). Other programs on a
shared machine change the figures; each run prints the CPU they used meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import openai
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import MODEL, PASSAGES, free_port, machine_cpu, messages, process, tree_cpu, wait_http  # noqa: E402
from llama_server_build import (  # noqa: E402
    BuildUnavailable,
    ensure_example_server,
    ensure_llama_server,
    llama_cpp_python_version,
)

NOISY_CORES = 0.25
PARALLEL = 8  # llama-server -np, the example's n_seq_max
CTX_PER_SEQ = 2048
REPO = Path(__file__).resolve().parent.parent

LLAMA_SERVER = "llama-server"
EXAMPLE = "llama-cpp-python example"
GATEWAY = "hostler gateway"
QUEUE = "hostler AsyncClient"
EMPTY_KV, PREFIX_KEPT = "empty KV", "prefix kept"
ROWS = {"llama-server": [LLAMA_SERVER], "example": [EXAMPLE], "hostler": [GATEWAY, QUEUE]}

# Runs the example server with the installed llama_cpp, patched, where the CPU has AMX, the way
# hostler's worker loads (worker/engines/llama_cpu.py): the example builds its model params from
# llama_cpp.llama_cpp.llama_model_default_params() and has no option for extra buffer types.
EXAMPLE_LAUNCHER = """
import runpy, sys
if sys.argv[1] == "no-extra-buffers":
    import llama_cpp.llama_cpp as lib
    original = lib.llama_model_default_params
    def defaults():
        params = original()
        params.use_extra_bufts = False
        return params
    lib.llama_model_default_params = defaults
script = sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


Chats = list[list[dict[str, str]]]
PAIRS = len(PASSAGES) * (len(PASSAGES) - 1)  # distinct paragraphs of two passages
WARM_UP = PAIRS - 2  # the warm-up's two paragraphs, far from the measured ones


def paragraph(k: int) -> str:
    """The k-th short paragraph: two different passages of the gateway benchmark, each pair once."""
    n, k = len(PASSAGES), k % PAIRS
    first = k % n
    return f"{PASSAGES[first]} {PASSAGES[(first + 1 + k // n) % n]}"


def prompts(count: int, start: int = 0) -> Chats:
    """Chat requests asking for a one-sentence summary of paragraphs start .. start+count-1."""
    return [messages(paragraph(start + i)) for i in range(count)]


# -- one measured run ------------------------------------------------------------------------


@dataclass
class Reply:
    ttft: float | None  # seconds to the first content delta
    text: str
    usage: int | None  # completion tokens as the server's usage says; None when it sent none
    tokens: int = 0  # completion tokens counted from the text (Bench.run), the same rule for every server
    retried: int = 0  # connections the server had closed before the request reached it
    evaluated: int | None = None  # prompt tokens the server evaluated (its usage: prompt - cached), if it says


@dataclass
class Cell:
    row: str
    clients: int
    seconds: float = 0.0
    replies: list[Reply | None] = field(default_factory=list)
    other_cores: float | None = None
    error: str | None = None
    no_usage: int = 0  # replies that came without a usage count
    idle_cores: float = 0.0  # CPU of this benchmark's other servers, idle meanwhile
    round_no: int = 0
    server_cpu: float = 0.0  # CPU seconds of the server's processes during the run
    client_cpu: float = 0.0  # CPU seconds of this process (the clients) during the run
    evaluated: int | None = None  # prompt tokens the server evaluated in the run, where it tells

    @property
    def ok(self) -> list[Reply]:
        return [r for r in self.replies if r is not None]

    @property
    def failed(self) -> int:
        return sum(r is None for r in self.replies)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.ok)

    @property
    def reported_tokens(self) -> int:
        return sum(r.usage or 0 for r in self.ok)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def requests_per_min(self) -> float:
        return 60.0 * len(self.ok) / self.seconds if self.seconds else 0.0

    def cpu_ms_per_token(self, seconds: float) -> float:
        return 1000.0 * seconds / self.tokens if self.tokens else 0.0

    def ttft(self, q: float) -> float | None:
        return percentile([r.ttft for r in self.ok if r.ttft is not None], q)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


Ask = Callable[[int], Awaitable[Reply]]


async def closed_loop(ask: Ask, requests: int, clients: int, timeout: float) -> tuple[float, list[Reply | None]]:
    """`clients` tasks, each sending its next request when its last one ended; failures are None."""
    replies: list[Reply | None] = [None] * requests
    pending = iter(range(requests))

    async def client() -> None:
        for i in pending:
            try:
                replies[i] = await ask(i)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
                print(f"    request {i} failed: {type(exc).__name__}: {exc}{cause}", file=sys.stderr)

    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), timeout)
    except TimeoutError:
        print(
            f"    the run did not finish within {timeout:.0f} s; unfinished requests count as failed", file=sys.stderr
        )
    return time.perf_counter() - started, replies


@contextlib.asynccontextmanager
async def openai_asker(base_url: str, chats: Chats, max_tokens: int) -> AsyncIterator[Ask]:
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)

    async def ask(i: int) -> Reply:
        started = time.perf_counter()
        chat: Any = chats[i]  # openai's message TypedDicts; these are plain dicts of the same shape
        retried = 0
        while True:
            try:
                stream = await sdk.chat.completions.create(
                    model=MODEL,
                    messages=chat,
                    max_tokens=max_tokens,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                break
            except openai.APIConnectionError as exc:
                # A kept-alive connection the server closed as it was reused: the request never
                # reached it (llama-server's HTTP library closes idle connections after 5 s, and
                # others in the pool may be stale too). The SDK's default would retry silently;
                # this retries up to 3 times and counts it. The cause is the SDK's own httpx's
                # RemoteProtocolError (openai 3 ships a fork, httpx2), so it is matched by name.
                if retried >= 3 or type(exc.__cause__).__name__ != "RemoteProtocolError":
                    raise
                retried += 1
        first: float | None = None
        parts: list[str] = []
        tokens: int | None = None
        evaluated: int | None = None
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
                    details = chunk.usage.prompt_tokens_details
                    if details is not None and details.cached_tokens is not None:
                        evaluated = chunk.usage.prompt_tokens - details.cached_tokens
                for choice in chunk.choices:
                    if choice.delta.content:
                        if first is None:
                            first = time.perf_counter() - started
                        parts.append(choice.delta.content)
        return Reply(first, "".join(parts), usage=tokens, retried=retried, evaluated=evaluated)

    try:
        yield ask
    finally:
        await sdk.close()


@contextlib.asynccontextmanager
async def queue_asker(redis_url: str, chats: Chats, max_tokens: int) -> AsyncIterator[Ask]:
    from hostler import AsyncClient

    async with AsyncClient(redis_url) as client:

        async def ask(i: int) -> Reply:
            started = time.perf_counter()
            stream = await client.chat(MODEL, chats[i], stream=True, max_tokens=max_tokens, temperature=0)
            first: float | None = None
            parts: list[str] = []
            async with stream:
                async for piece in stream:
                    if piece:
                        if first is None:
                            first = time.perf_counter() - started
                        parts.append(piece)
            result = stream.result
            return Reply(first, "".join(parts), usage=result.usage.completion_tokens if result is not None else None)

        yield ask


def _self_cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


@dataclass
class Target:
    """One way of sending the requests, and the processes whose CPU is its own."""

    row: str
    asker: Callable[[Chats], contextlib.AbstractAsyncContextManager[Ask]]
    pids: list[int]
    # The prompt tokens the server has evaluated so far, for a server whose replies do not say.
    evaluated: Callable[[], int] | None = None


class Bench:
    def __init__(self, args: argparse.Namespace, count_tokens: Callable[[str], int]):
        self.args = args
        self.count_tokens = count_tokens
        self.cells: list[Cell] = []
        self.all_pids: set[int] = set()

    def warm(self, target: Target) -> None:
        """Two requests, not timed: loads what loads lazily (hostler's model) and warms every path."""

        async def go() -> list[Reply | None]:
            async with target.asker(prompts(2, WARM_UP)) as ask:
                return (await closed_loop(ask, 2, 1, self.args.start_timeout))[1]

        replies = asyncio.run(go())
        if not any(replies):
            raise RuntimeError(f"{target.row}: the warm-up requests failed")
        sample = next(r.text for r in replies if r is not None)
        print(f"  {target.row} warmed up; first reply: {sample.strip()[:100]!r}", flush=True)

    def wait_quiet(self) -> None:
        """Waits (up to --quiet-wait seconds) until other programs use under NOISY_CORES for 2 s."""
        deadline = time.monotonic() + self.args.quiet_wait
        ours = sorted(self.all_pids)
        other = 0.0
        while True:
            before = (tree_cpu(ours) + _self_cpu(), machine_cpu())
            time.sleep(2.0)
            other = (machine_cpu() - before[1] - (tree_cpu(ours) + _self_cpu() - before[0])) / 2.0
            if other < NOISY_CORES or time.monotonic() > deadline:
                break
        if other >= NOISY_CORES and self.args.quiet_wait > 0:
            print(f"    (other programs still use {other:.2f} cores after {self.args.quiet_wait:.0f} s; going on)")

    def run(self, target: Target, clients: int, round_no: int, chats: Chats) -> Cell:
        """All the requests, `clients` at a time, with the CPU other programs used meanwhile."""
        self.wait_quiet()
        others = sorted(self.all_pids - set(target.pids))

        async def go() -> tuple[float, list[Reply | None]]:
            async with target.asker(chats) as ask:
                return await closed_loop(ask, len(chats), clients, self.args.run_timeout)

        evaluated_before = target.evaluated() if target.evaluated else 0
        before = (tree_cpu(target.pids), _self_cpu(), tree_cpu(others), machine_cpu())
        seconds, replies = asyncio.run(go())
        server, client = tree_cpu(target.pids) - before[0], _self_cpu() - before[1]
        ours, idle = server + client, max(0.0, tree_cpu(others) - before[2])
        cell = Cell(target.row, clients, seconds, replies, round_no=round_no, server_cpu=server, client_cpu=client)
        cell.other_cores = max(0.0, machine_cpu() - before[3] - ours - idle) / seconds
        cell.idle_cores = idle / seconds
        for reply in cell.ok:
            reply.tokens = self.count_tokens(reply.text)
            cell.no_usage += reply.usage is None
        if target.evaluated is not None:
            cell.evaluated = target.evaluated() - evaluated_before
        elif cell.ok and all(r.evaluated is not None for r in cell.ok):
            cell.evaluated = sum(r.evaluated or 0 for r in cell.ok)
        self.cells.append(cell)
        print("  " + cell_line(cell), flush=True)
        return cell

    def skip(self, row: str, why: str) -> None:
        print(f"{row}: SKIPPED: {why}", flush=True)
        for clients in self.args.clients:
            self.cells.append(Cell(row, clients, error=why))


def cell_line(cell: Cell) -> str:
    p50, p95 = cell.ttft(50), cell.ttft(95)
    if cell.no_usage:
        counted = f", {cell.no_usage} replies without usage"
    else:
        counted = f", {cell.reported_tokens} tokens by the server's usage, {cell.tokens} counted"
    retried = sum(r.retried for r in cell.ok)
    if cell.evaluated is not None:
        counted += f", {cell.evaluated} prompt tokens evaluated"
    counted += f", {retried} requests resent on a connection closed by the server" if retried else ""
    return (
        f"{cell.row} x{cell.clients}: {len(cell.ok)} ok {cell.failed} failed in {cell.seconds:.1f} s, "
        f"{cell.tokens_per_s:.1f} tok/s, {cell.requests_per_min:.1f} req/min, TTFT p50 {ms(p50)} p95 {ms(p95)}, "
        f"CPU per token: server {cell.cpu_ms_per_token(cell.server_cpu):.2f} ms, "
        f"clients {cell.cpu_ms_per_token(cell.client_cpu):.2f} ms, "
        f"other programs {cell.other_cores or 0.0:.2f} cores, idle servers {cell.idle_cores:.2f}{counted}"
    )


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


# -- the servers (all stay up; only one is driven at a time) --------------------------------------


@dataclass
class Setup:
    bench: Bench
    stack: contextlib.ExitStack
    path: Path
    tmp: Path
    amx: bool

    @property
    def args(self) -> argparse.Namespace:
        return self.bench.args


def llama_server_flags(binary: Path) -> str:
    try:
        return subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def start_llama_server(setup: Setup) -> list[Target]:
    args = setup.args
    try:
        binary = ensure_llama_server(jobs=args.build_jobs)
    except BuildUnavailable as exc:
        setup.bench.skip(LLAMA_SERVER, str(exc))
        return []
    port = free_port()
    cmd = [str(binary), "-m", str(setup.path), "-np", str(PARALLEL), "-t", str(args.threads)]
    cmd += ["-tb", str(args.threads), "-c", str(PARALLEL * CTX_PER_SEQ), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--alias", MODEL]
    if setup.amx:
        if "--no-repack" in llama_server_flags(binary):
            cmd.append("--no-repack")
        else:
            print("  this llama-server has no --no-repack; AMX may crash it", file=sys.stderr)
    print(f"{LLAMA_SERVER}: {' '.join(cmd[1:])}", flush=True)
    log = setup.tmp / "llama-server.log"
    proc = setup.stack.enter_context(process(cmd, log))
    wait_http(f"http://127.0.0.1:{port}/health", LLAMA_SERVER, proc, log, timeout=args.start_timeout)
    url = f"http://127.0.0.1:{port}/v1"
    return [Target(LLAMA_SERVER, lambda chats: openai_asker(url, chats, args.max_tokens), [proc.pid])]


def start_example_server(setup: Setup) -> list[Target]:
    args = setup.args
    try:
        script = ensure_example_server()
    except BuildUnavailable as exc:
        setup.bench.skip(EXAMPLE, str(exc))
        return []
    missing = [m for m in ("fastapi", "uvicorn", "jinja2", "numpy", "pydantic") if not _importable(m)]
    if missing:
        setup.bench.skip(EXAMPLE, f"its dependencies {', '.join(missing)} are not installed (pip install them)")
        return []
    port = free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "model": {
            "path": str(setup.path),
            "alias": MODEL,
            "n_ctx": PARALLEL * CTX_PER_SEQ,
            "n_seq_max": PARALLEL,
            "threads": args.threads,
            "threads_batch": args.threads,
        },
    }
    config_path = setup.tmp / "example-server.json"
    config_path.write_text(json.dumps(config, indent=2))
    mode = "no-extra-buffers" if setup.amx else "defaults"
    cmd = [sys.executable, "-c", EXAMPLE_LAUNCHER, mode, str(script), "-C", str(config_path)]
    print(f"{EXAMPLE}: {script} with {json.dumps(config['model'])}, model params: {mode}", flush=True)
    log = setup.tmp / "example-server.log"
    proc = setup.stack.enter_context(process(cmd, log))
    wait_http(f"http://127.0.0.1:{port}/v1/models", EXAMPLE, proc, log, timeout=args.start_timeout)
    url = f"http://127.0.0.1:{port}/v1"
    return [Target(EXAMPLE, lambda chats: openai_asker(url, chats, args.max_tokens), [proc.pid])]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def start_hostler(setup: Setup) -> list[Target]:
    """`hostler up` and `hostler gateway` as a user starts them: no load parameters at all.

    The gateway row and the AsyncClient row each get a stack of their own (Redis, `hostler up`):
    a round sends both the same paragraphs, and one worker's kept prompts would give the second
    row every prompt for free."""
    args = setup.args
    print("hostler: hostler up --models DIR --no-demo; hostler gateway --port PORT (defaults)", flush=True)
    return [
        hostler_target(setup.stack, setup.tmp, setup.path, row, row.split()[-1], args.max_tokens, args.start_timeout)
        for row in (GATEWAY, QUEUE)
    ]


def hostler_target(
    stack: contextlib.ExitStack,
    tmp: Path,
    model: Path,
    row: str,
    name: str,
    max_tokens: int,
    start_timeout: float,
    extra_env: Mapping[str, str] | None = None,
) -> Target:
    """One hostler stack named `name` (an embedded Redis, `hostler up` on a folder holding only
    `model`, and for the gateway row `hostler gateway`), and how row sends it requests."""
    from hostler.worker.embedded_redis import EmbeddedRedis

    models = tmp / f"models-{name}"
    models.mkdir()
    (models / f"{MODEL}.gguf").symlink_to(model)
    hostler = [sys.executable, "-m", "hostler.worker"]
    server = stack.enter_context(EmbeddedRedis())
    up_cmd = [*hostler, "up", "--models", str(models), "--no-demo", "--host-id", f"bench-{name}"]
    up = stack.enter_context(process(up_cmd, tmp / f"up-{name}.log", server.url, extra_env))
    pids = [up.pid, *([server.process.pid] if server.process else [])]
    if row == QUEUE:
        # Nothing else waits for `hostler up` here (the gateway row waits for its /health).
        wait_listed(server.url, up, tmp / f"up-{name}.log", start_timeout)
        return Target(
            row, lambda chats: queue_asker(server.url, chats, max_tokens), pids, lambda: prompt_evaluated(server.url)
        )
    port = free_port()
    log = tmp / f"gateway-{name}.log"
    gateway = stack.enter_context(process([*hostler, "gateway", "--port", str(port)], log, server.url, extra_env))
    wait_http(f"http://127.0.0.1:{port}/health", row, gateway, log, timeout=start_timeout)
    url = f"http://127.0.0.1:{port}/v1"
    return Target(
        row,
        lambda chats: openai_asker(url, chats, max_tokens),
        [*pids, gateway.pid],
        lambda: prompt_evaluated(server.url),
    )


def prompt_evaluated(redis_url: str) -> int:
    """The prompt tokens the model's workers have evaluated so far (their reports), read once the
    reports stop changing: a worker reports at once when its last job ends, a moment after its
    client heard of the end."""
    from hostler import Client

    last = -1
    deadline = time.monotonic() + 3.0
    with Client(redis_url) as client:
        while True:
            now = sum(w.prompt_tokens_evaluated for w in client.status().workers if w.model == MODEL)
            if now == last or time.monotonic() > deadline:
                return now
            last = now
            time.sleep(0.25)


def wait_listed(redis_url: str, up: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Until `hostler up` has listed the model on its Redis."""
    from hostler import Client

    deadline = time.monotonic() + timeout
    with Client(redis_url) as client:
        while not any(info.id == MODEL for info in client.models()):
            if up.poll() is not None:
                raise RuntimeError(f"hostler up exited with {up.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"hostler up did not list {MODEL} within {timeout:.0f} s; see {log}")
            time.sleep(0.2)


# -- in process ---------------------------------------------------------------------------------


def inprocess_ttft(path: Path, chats: Chats, threads: int) -> dict[str, list[float]]:
    """TTFT of each prompt with llama-cpp-python in this process, one at a time, two ways.

    "empty KV": llm.reset() before each prompt, so all of it is evaluated (hostler's worker
    without cache_prompt); "prefix kept": Llama's own default, which evaluates only what differs
    from the previous prompt (the chat template and instruction these prompts share stay cached).
    """
    import llama_cpp
    from hostler.worker.engines.llama_cpu import safe_llama_defaults

    with safe_llama_defaults():
        llm = llama_cpp.Llama(str(path), n_ctx=CTX_PER_SEQ, n_threads=threads, n_threads_batch=threads, verbose=False)
    out: dict[str, list[float]] = {EMPTY_KV: [], PREFIX_KEPT: []}
    try:
        for way, times in out.items():
            for i, chat in enumerate([chats[0], *chats]):
                if way == EMPTY_KV:
                    llm.reset()  # type: ignore[no-untyped-call]
                messages_any: Any = chat  # llama_cpp's message TypedDicts; plain dicts of the same shape
                started = time.perf_counter()
                stream: Any = llm.create_chat_completion(messages_any, max_tokens=1, temperature=0, stream=True)
                for chunk in stream:
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        if i > 0:  # the first call warms up
                            times.append(time.perf_counter() - started)
                        break
        return out
    finally:
        llm.close()


def token_counter(path: Path) -> Callable[[str], int]:
    """Counts a reply's tokens from its text: one rule for every server. Their own counts differ
    (llama-server's usage counts the end-of-generation token, one more per reply than hostler's
    and OpenAI's; the example server sends none when streaming)."""
    import llama_cpp

    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)

    def count(text: str) -> int:
        return len(vocab.tokenize(text.encode(), add_bos=False, special=False)) if text else 0

    return count


# -- report -------------------------------------------------------------------------------------


def quietest(cells: list[Cell]) -> list[Cell]:
    """Per client count, every row of the round other programs disturbed least.

    A round sends the same new paragraphs to every server, so rows compare only within one
    round. On a shared machine a neighbour only ever slows a server down, by an amount that
    depends on when it woke: the round whose noisiest run saw the least CPU of others is the
    fairest comparison.
    """
    rounds: dict[tuple[int, int], list[Cell]] = {}
    for cell in cells:
        if not cell.error:
            rounds.setdefault((cell.clients, cell.round_no), []).append(cell)
    best: dict[int, list[Cell]] = {}
    for (clients, _), group in sorted(rounds.items()):
        noise = max(c.other_cores or 0.0 for c in group)
        if clients not in best or noise < max(c.other_cores or 0.0 for c in best[clients]):
            best[clients] = group
    order = [LLAMA_SERVER, EXAMPLE, GATEWAY, QUEUE]
    chosen = [cell for group in best.values() for cell in sorted(group, key=lambda c: order.index(c.row))]
    return chosen + [cell for cell in cells if cell.error]


def report(bench: Bench, inproc: dict[str, list[float]] | None) -> None:
    cells = quietest(bench.cells)
    rounds = f", the quietest of {bench.args.rounds} rounds per client count" if bench.args.rounds > 1 else ""
    print(f"\n{bench.args.requests} requests per run{rounds}:")
    print(
        "| server | clients | tok/s | req/min | TTFT p50 | TTFT p95 | server CPU ms/token | client CPU ms/token "
        "| ok/failed | other programs (cores) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cell in cells:
        if cell.error:
            print(f"| {cell.row} | {cell.clients} | skipped | | | | | | | |")
            continue
        print(
            f"| {cell.row} | {cell.clients} | {cell.tokens_per_s:.1f} | {cell.requests_per_min:.1f} | "
            f"{ms(cell.ttft(50))} | {ms(cell.ttft(95))} | {cell.cpu_ms_per_token(cell.server_cpu):.2f} | "
            f"{cell.cpu_ms_per_token(cell.client_cpu):.2f} | {len(cell.ok)}/{cell.failed} | "
            f"{cell.other_cores or 0.0:.2f} |"
        )
    by = {(c.row, c.clients): c for c in cells if not c.error and c.ok}
    report_ratios(by, bench.args.clients)
    if bench.args.rounds > 1:
        report_round_ratios(bench.cells, bench.args.clients)
    if inproc:
        report_added_ttft(by, inproc)
    report_texts(bench.cells)
    report_evaluated(bench.cells)
    busy = [c for c in bench.cells if not c.error and (c.other_cores or 0.0) > NOISY_CORES]
    if busy:
        worst = max(c.other_cores or 0.0 for c in busy)
        print(
            f"\nWARNING: other programs used more than {NOISY_CORES} cores during {len(busy)} of "
            f"{len(bench.cells)} runs (up to {worst:.2f}). llama.cpp with as many threads as cores slows down "
            "several-fold when another program takes a core, so those figures measure the neighbours as much as "
            "the servers: rerun on a quiet machine, with --rounds 3, or with --threads 1."
        )


def report_ratios(by: dict[tuple[str, int], Cell], clients_list: list[int]) -> None:
    print("\nratios (tokens/s; requests/min in brackets):")
    for clients in clients_list:
        for mine in (GATEWAY, QUEUE):
            for theirs in (LLAMA_SERVER, EXAMPLE):
                a, b = by.get((mine, clients)), by.get((theirs, clients))
                if a is None or b is None or not b.tokens_per_s or not b.requests_per_min:
                    continue
                print(
                    f"  {clients} client(s): {mine} / {theirs}: {a.tokens_per_s / b.tokens_per_s:.2f} "
                    f"({a.requests_per_min / b.requests_per_min:.2f})"
                )


def report_round_ratios(cells: list[Cell], clients_list: list[int]) -> None:
    """hostler / each other server in every round, and the median: the same server moves by tens
    of percent between rounds on a shared machine, and every row of a round moves with it."""
    by = {(c.row, c.clients, c.round_no): c for c in cells if not c.error and c.ok}
    rounds = sorted({c.round_no for c in cells})

    def ratios(mine: str, theirs: str, clients: int) -> list[float]:
        pairs = [(by.get((mine, clients, r)), by.get((theirs, clients, r))) for r in rounds]
        return [a.tokens_per_s / b.tokens_per_s for a, b in pairs if a is not None and b is not None and b.tokens_per_s]

    for theirs in (LLAMA_SERVER, EXAMPLE):
        lines = []
        for clients in clients_list:
            for mine in (GATEWAY, QUEUE):
                each = ratios(mine, theirs, clients)
                if each:
                    listed = ", ".join(f"{q:.2f}" for q in each)
                    above = sum(q >= 1.0 for q in each)
                    lines.append(
                        f"  {clients} client(s): {mine}: {listed}; median {statistics.median(each):.2f}, "
                        f"at least 1.00 in {above} of {len(each)}"
                    )
        if lines:
            print(f"\nhostler / {theirs} in every round (tokens/s), and the median over rounds:")
            print("\n".join(lines))


def report_added_ttft(by: dict[tuple[str, int], Cell], inproc: dict[str, list[float]]) -> None:
    print("\nin-process llama-cpp-python TTFT, same prompts one at a time (added TTFT = hostler p50 - this p50):")
    for way, times in inproc.items():
        base = percentile(times, 50)
        added = []
        for row in (QUEUE, GATEWAY):
            one = by.get((row, 1))
            p50 = one.ttft(50) if one else None
            if p50 is not None and base is not None:
                added.append(f"{row} {(p50 - base) * 1000:+.1f} ms")
        print(f"  {way}: p50 {ms(base)} p95 {ms(percentile(times, 95))}; added at 1 client: {', '.join(added) or '-'}")


def report_texts(cells: list[Cell]) -> None:
    """Temperature-0 texts equal to llama-server's for the same request, over every round."""
    reference = {(c.round_no, c.clients): c for c in cells if c.row == LLAMA_SERVER and not c.error}
    same: dict[tuple[str, int], list[int]] = {}
    for cell in cells:
        ref = reference.get((cell.round_no, cell.clients))
        if cell.row == LLAMA_SERVER or cell.error or ref is None:
            continue
        counts = same.setdefault((cell.row, cell.clients), [0, 0])
        for a, b in zip(cell.replies, ref.replies, strict=True):
            counts[0] += a is not None and b is not None and a.text.strip() == b.text.strip()
            counts[1] += 1
    if same:
        print("\ntemperature-0 texts equal to llama-server's for the same request:")
        print("  " + ", ".join(f"{row} x{clients} {n}/{total}" for (row, clients), (n, total) in same.items()))


def report_evaluated(cells: list[Cell]) -> None:
    """Prompt tokens each server evaluated over every round, where it tells (llama-server's usage
    gives its cached tokens, hostler's workers report theirs; the example says neither). On a
    machine whose cores the decode fills, tokens/s follows the tokens evaluated, prompt and
    generated alike."""
    totals: dict[tuple[str, int], int] = {}
    for cell in cells:
        if not cell.error and cell.evaluated is not None:
            totals[(cell.row, cell.clients)] = totals.get((cell.row, cell.clients), 0) + cell.evaluated
    if totals:
        print("\nprompt tokens evaluated over every round (the rest came from a cache):")
        print("  " + ", ".join(f"{row} x{clients} {n}" for (row, clients), n in totals.items()))


def hostler_state() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--oneline"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    return f"{head[:100]}" + (f" + {len(dirty)} uncommitted paths" if dirty else "")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32, help="Requests per run (default 32).")
    parser.add_argument("--clients", default="1,8", help="Concurrent clients, comma-separated (default 1,8).")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (default 64).")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser.add_argument(
        "--threads",
        type=int,
        default=usable,
        help=f"llama.cpp threads of llama-server, the example and the in-process run (default: usable cores, {usable})"
        "; hostler keeps its defaults.",
    )
    parser.add_argument("--rounds", type=int, default=1, help="Rounds; the table shows the quietest (default 1).")
    parser.add_argument("--only", default="", help="Comma-separated rows: llama-server,example,hostler (default all).")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="Before each run, wait up to this many seconds for other programs to go quiet (default 60; 0: never).",
    )
    parser.add_argument("--build-jobs", type=int, default=2, help="Parallel jobs of the one-time llama-server build.")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="Seconds a server may take to start.")
    parser.add_argument("--run-timeout", type=float, default=300.0, help="Seconds one run of all requests may take.")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    args.only = {r.strip() for r in args.only.split(",") if r.strip()} or {"llama-server", "example", "hostler"}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the servers on the way out
    from hostler.worker.engines.llama_cpu import extra_buffers_safe
    from hostler.worker.models.fetch import SMOLLM2, fetch

    path = fetch(SMOLLM2, quiet=True)
    amx = not extra_buffers_safe()
    print(
        f"{args.requests} chat requests (one-sentence summaries), max_tokens {args.max_tokens}, temperature 0, "
        f"streamed, clients {args.clients}, on {path.name}; llama-cpp-python {llama_cpp_python_version()}; "
        f"{os.cpu_count()} cores, {args.threads} llama.cpp threads outside hostler; hostler at {hostler_state()}"
    )
    if amx:
        print(
            "CPU has AMX (amx_int8): llama-server runs with --no-repack, the example server and the in-process run "
            "load without extra buffer types (ggml's AMX matmul crashes here; see worker/engines/llama_cpu.py)"
        )
    bench = Bench(args, token_counter(path))
    started = time.monotonic()
    inproc: dict[str, list[float]] | None = None
    try:
        # The temporary directory outlives the servers: the stack stops them first.
        with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name, contextlib.ExitStack() as stack:
            targets = start_all(bench, Setup(bench, stack, path, Path(tmp_name), amx))
            measure_all(bench, targets)
        if "hostler" in args.only:
            bench.wait_quiet()
            inproc = inprocess_ttft(path, prompts(args.requests), args.threads)
    except KeyboardInterrupt:
        print("interrupted; servers stopped; what was measured so far:", file=sys.stderr)
        report(bench, inproc)
        return 130
    report(bench, inproc)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    return 0


STARTERS: dict[str, Callable[[Setup], list[Target]]] = {
    "llama-server": start_llama_server,
    "example": start_example_server,
    "hostler": start_hostler,
}


def start_all(bench: Bench, setup: Setup) -> list[Target]:
    """Starts every server and warms it up; one that fails is reported and skipped."""
    targets: list[Target] = []
    for name, start in STARTERS.items():
        if name not in bench.args.only:
            continue
        try:
            started = start(setup)
            for target in started:
                bench.warm(target)
        except Exception as exc:  # noqa: BLE001 - one server failing must not stop the others
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            for row in ROWS[name]:
                bench.skip(row, f"failed: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        targets += started
        for target in started:
            bench.all_pids.update(target.pids)
    return targets


def measure_all(bench: Bench, targets: list[Target]) -> None:
    """Every client count on every target, one at a time, rotating the order each round.

    Each (round, client count) sends its own paragraphs, the same to every target: a prompt a
    server has seen before would be a prompt-cache hit (llama-server keeps prompts in RAM).
    """
    args = bench.args
    for round_no in range(args.rounds):
        order = targets if round_no % 2 == 0 else targets[::-1]
        for index, clients in enumerate(args.clients):
            chats = prompts(args.requests, (round_no * len(args.clients) + index) * args.requests)
            print(f"round {round_no + 1}, {clients} client(s):", flush=True)
            for target in order:
                bench.run(target, clients, round_no, chats)


if __name__ == "__main__":
    sys.exit(main())
