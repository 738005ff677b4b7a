"""MlxEngine in-process on the tiny generated MLX folder: real mlx-lm, no Redis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hostler.schemas import ChatMessage, LoadParams, SamplingParams
from hostler.worker.engines.protocol import ContextExceeded, LoadFailed, NoChatTemplate

pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")

from hostler.worker.engines.mlx import MlxEngine  # noqa: E402

PROMPT = "Hello world, the cat"
GREEDY = SamplingParams(max_tokens=40, temperature=0)


def never() -> bool:
    return False


@pytest.fixture(scope="module")
def engine(tiny_mlx: Path) -> MlxEngine:
    return MlxEngine(tiny_mlx, LoadParams(n_ctx=256))


def test_pieces_join_to_the_text_and_counts_add_up(engine: MlxEngine) -> None:
    generation = engine.complete(PROMPT, GREEDY, never)
    pieces = list(generation)
    assert len(pieces) > 1 and "".join(pieces) == generation.text
    assert generation.prompt_tokens == engine.count_tokens(PROMPT)
    assert 0 < generation.completion_tokens <= 40
    assert generation.finish_reason == ("length" if generation.completion_tokens == 40 else "stop")


def test_same_input_same_output_whatever_ran_before(engine: MlxEngine) -> None:
    first = engine.complete(PROMPT, GREEDY, never)
    text = "".join(first)
    "".join(engine.complete("something else entirely", SamplingParams(max_tokens=9, seed=1), never))
    assert "".join(engine.complete(PROMPT, GREEDY, never)) == text


def test_should_stop_is_honoured_between_tokens(engine: MlxEngine) -> None:
    asked = 0

    def after_three() -> bool:
        nonlocal asked
        asked += 1
        return asked >= 3

    generation = engine.complete(PROMPT, SamplingParams(max_tokens=40, temperature=0), after_three)
    "".join(generation)
    assert generation.finish_reason == "canceled" and generation.completion_tokens == 3


def test_max_tokens_is_clamped_to_the_context(tiny_mlx: Path) -> None:
    small = MlxEngine(tiny_mlx, LoadParams(n_ctx=32))
    n = small.count_tokens(PROMPT)
    generation = small.complete(PROMPT, SamplingParams(max_tokens=500, temperature=0), never)
    "".join(generation)
    assert generation.completion_tokens <= 32 - n
    with pytest.raises(ContextExceeded, match=r"the prompt is \d+ tokens but the context of 'tiny-mlx' is 32 tokens"):
        small.complete(PROMPT * 10, GREEDY, never)
    small.close()


def test_chat_template_from_the_tokenizer_or_the_manifest(tiny_mlx: Path, tmp_path: Path) -> None:
    messages = [ChatMessage(role="user", content="hi")]
    engine = MlxEngine(tiny_mlx, LoadParams())
    # <s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n: longer than the words.
    with_template = engine.chat(messages, GREEDY, never)
    assert with_template.prompt_tokens > engine.count_tokens("hi") + 4
    engine.close()
    base = tmp_path / "base"
    shutil.copytree(tiny_mlx, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    without = MlxEngine(base, LoadParams())
    with pytest.raises(NoChatTemplate, match="'base' has no chat template"):
        without.chat(messages, GREEDY, never)
    without.close()
    # A model.yaml's chat_template stands in for a missing one.
    given = MlxEngine(base, LoadParams(), chat_template="{{ bos_token }}Q: {{ messages[-1]['content'] }}\nA:")
    assert given.chat(messages, GREEDY, never).prompt_tokens == given.count_tokens("Q: hi\nA:")
    given.close()


def test_seeds_make_sampling_repeatable(engine: MlxEngine) -> None:
    hot = {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "max_tokens": 30}
    one = "".join(engine.complete(PROMPT, SamplingParams(seed=5, **hot), never))  # type: ignore[arg-type]
    assert "".join(engine.complete(PROMPT, SamplingParams(seed=5, **hot), never)) == one  # type: ignore[arg-type]
    texts = {"".join(engine.complete(PROMPT, SamplingParams(seed=s, **hot), never)) for s in range(6, 10)}  # type: ignore[arg-type]
    assert texts - {one}


def test_penalties_change_greedy_output(engine: MlxEngine) -> None:
    plain = "".join(engine.complete(PROMPT, GREEDY, never))
    for penalty in ({"repeat_penalty": 1.5}, {"presence_penalty": 1.5}, {"frequency_penalty": 1.5}):
        params = SamplingParams(max_tokens=40, temperature=0, **penalty)  # type: ignore[arg-type]
        assert "".join(engine.complete(PROMPT, params, never)) != plain, penalty


def write_folder(folder: Path, config: object = None, weights: bool = True) -> Path:
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if weights:
        (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    return folder


def test_folders_that_are_not_models_fail_to_load_with_the_reason(tmp_path: Path, tiny_mlx: Path) -> None:
    with pytest.raises(LoadFailed, match="not a directory"):
        MlxEngine(tmp_path / "absent-repo-name", LoadParams())
    with pytest.raises(LoadFailed, match="no config.json"):
        MlxEngine(write_folder(tmp_path / "noconfig"), LoadParams())
    with pytest.raises(LoadFailed, match=r"no model\*.safetensors"):
        MlxEngine(write_folder(tmp_path / "noweights", {"model_type": "llama"}, weights=False), LoadParams())
    with pytest.raises(LoadFailed, match="mlx-lm could not load unknown-arch"):
        MlxEngine(write_folder(tmp_path / "unknown-arch", {"model_type": "no-such-architecture"}), LoadParams())
    broken = tmp_path / "broken-weights"
    shutil.copytree(tiny_mlx, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoadFailed, match="mlx-lm could not load broken-weights"):
        MlxEngine(broken, LoadParams())
