"""The GPU/host split on the two real models' files: SmolLM2 (its own output matrix) and
Gemma 3 (tied: the output layer gets a copy of token_embd). Only the files' headers are read,
but the `smollm2` and `gemma3` fixtures make these e2e."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostler.schemas import LoadParams
from hostler.worker.memory.estimate import estimate_gguf
from test_offload import check_split_adds_up

pytestmark = pytest.mark.e2e


def test_smollm2_split_adds_up_to_the_whole(smollm2: Path) -> None:
    check_split_adds_up(smollm2)
    facts = estimate_gguf(smollm2, LoadParams()).offload
    assert facts is not None and len(facts.layer_bytes) == 30


def test_gemma3_split_adds_up_to_the_whole(gemma3: Path) -> None:
    check_split_adds_up(gemma3)
    facts = estimate_gguf(gemma3, LoadParams()).offload
    # Gemma 3 ties its output to token_embd: offloading the output layer copies the embeddings.
    assert facts is not None and facts.tied_output_bytes > 0 and len(facts.layer_bytes) == 18
