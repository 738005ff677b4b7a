"""MLX folders without a runtime: the generator script, the registry, the memory estimate, and
which engines a host can run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostler.schemas import LoadParams
from hostler.worker.engines import available as engines
from hostler.worker.engines.available import EngineUnavailable, engine_availability, engine_factory, unavailable_reason
from hostler.worker.memory.estimate import MLX_RUNTIME_BYTES, estimate_mlx
from hostler.worker.models.registry import scan
from make_tiny_mlx import main, write_tiny_mlx

pytest.importorskip("tokenizers", reason="make_tiny_mlx builds its tokenizer with the tokenizers library")


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_the_generator_is_deterministic_given_a_seed(tmp_path: Path, tiny_mlx: Path) -> None:
    again = write_tiny_mlx(tmp_path / "again")
    assert digests(again) == digests(tiny_mlx)
    other = digests(write_tiny_mlx(tmp_path / "other", seed=1))
    assert other["model.safetensors"] != digests(tiny_mlx)["model.safetensors"]
    assert set(other) == {"config.json", "model.safetensors", "special_tokens_map.json"} | {
        "tokenizer.json",
        "tokenizer_config.json",
    }


def test_the_generator_cli_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "cli"), "--hidden", "32", "--layers", "1", "--no-chat-template"]) == 0
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["model_type"]) == (32, 1, "llama")
    assert "chat_template" not in json.loads((tmp_path / "cli" / "tokenizer_config.json").read_text())
    assert main([str(tmp_path / "bad"), "--hidden", "30", "--heads", "4"]) == 2
    assert "must divide by heads" in capsys.readouterr().err


def test_the_registry_reads_mlx_folders(tmp_path: Path, tiny_mlx: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "linked").symlink_to(tiny_mlx, target_is_directory=True)
    write_tiny_mlx(models / "base", chat_template=None)
    # config.json beside an adapter is not a model: mlx-lm loads model*.safetensors only.
    adapter = models / "adapter"
    adapter.mkdir()
    (adapter / "config.json").write_text("{}")
    (adapter / "adapters.safetensors").write_bytes(b"\x00" * 8)
    catalog = scan(models)
    assert sorted(catalog.models) == ["base", "linked"] and catalog.problems == []
    linked = catalog.models["linked"]
    assert linked.engine == "mlx" and linked.path == models / "linked"
    assert linked.size_bytes == sum(p.stat().st_size for p in tiny_mlx.iterdir())
    assert linked.has_chat_template and not catalog.models["base"].has_chat_template


def test_a_template_in_chat_template_jinja_counts(tmp_path: Path, tiny_mlx: Path) -> None:
    folder = tmp_path / "models" / "jinja"
    write_tiny_mlx(folder, chat_template=None)
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert scan(folder.parent).models["jinja"].has_chat_template


def test_memory_estimate_of_the_tiny_folder(tiny_mlx: Path) -> None:
    config = json.loads((tiny_mlx / "config.json").read_text())
    found = estimate_mlx(tiny_mlx, LoadParams(n_ctx=1000, n_batch=100, n_parallel=1))
    header_len = int.from_bytes((tiny_mlx / "model.safetensors").read_bytes()[:8], "little")
    assert found.weights_bytes == (tiny_mlx / "model.safetensors").stat().st_size - 8 - header_len
    # float16 weights: K and V in float16, 1000 positions padded to 1024.
    per_cell = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * 2
    assert found.kv_cache_bytes == per_cell * 1024
    # Kept prompt caches: as much as the slots' KV cache, so a context cell costs twice.
    assert found.kept_prompts_bytes == found.kv_cache_bytes and found.kv_bytes_per_cell == 2 * per_cell
    off = estimate_mlx(tiny_mlx, LoadParams(n_ctx=1000, n_batch=100, n_parallel=1, cache_ram_mib=0))
    assert off.kept_prompts_bytes == 0 and off.kv_bytes_per_cell == per_cell
    assert off.total_bytes == found.total_bytes - found.kept_prompts_bytes
    fixed = estimate_mlx(tiny_mlx, LoadParams(n_ctx=1000, n_batch=100, n_parallel=1, cache_ram_mib=3))
    assert fixed.kept_prompts_bytes == 3 * 2**20 and fixed.kv_bytes_per_cell == per_cell
    assert found.overhead_bytes > MLX_RUNTIME_BYTES
    wider = estimate_mlx(tiny_mlx, LoadParams(n_ctx=1000, n_batch=200, n_parallel=1))
    assert wider.compute_bytes > found.compute_bytes and wider.kv_cache_bytes == found.kv_cache_bytes


def test_float32_weights_mean_a_float32_kv_cache(tmp_path: Path, tiny_mlx: Path) -> None:
    wide = write_tiny_mlx(tmp_path / "f32", dtype="float32")
    narrow = estimate_mlx(tiny_mlx, LoadParams())
    assert estimate_mlx(wide, LoadParams()).kv_cache_bytes == 2 * narrow.kv_cache_bytes


@pytest.fixture
def fresh_availability() -> Iterator[None]:
    # engine_availability is cached for the process: each test judges afresh.
    engines._availability.cache_clear()
    yield
    engines._availability.cache_clear()


def test_engines_this_host_can_run(fresh_availability: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(engines.DISABLE_ENV, raising=False)
    available = engine_availability()
    assert set(available) == {"llama", "mlx"}
    assert available["mlx"] is None  # the test environment installs the mlx extra
    assert "unknown engine 'onnx'" in (unavailable_reason("onnx") or "")
    available["mlx"] = "scribbled"  # a copy: callers cannot change the cached answer
    assert engine_availability()["mlx"] is None


def test_a_missing_library_is_named_with_the_install_hint(
    fresh_availability: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    requirements = dict(engines._REQUIREMENTS)
    requirements["mlx"] = (("hostler_no_such_module", "mlx-lm is not installed (pip install 'hostler[mlx]')"),)
    monkeypatch.setattr(engines, "_REQUIREMENTS", requirements)
    assert engine_availability()["mlx"] == "mlx-lm is not installed (pip install 'hostler[mlx]')"
    with pytest.raises(EngineUnavailable, match=r"cannot run the mlx engine: mlx-lm is not installed"):
        engine_factory("mlx")


def test_an_operator_can_turn_an_engine_off(fresh_availability: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(engines.DISABLE_ENV, " mlx , ")
    assert engine_availability() == {
        "llama": None,
        "mlx": "the mlx engine is turned off on this host (HOSTLER_DISABLE_ENGINES)",
    }


def test_the_factory_picks_the_engine_by_name(fresh_availability: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from hostler.worker.engines.llama_slots import LlamaSlots
    from hostler.worker.engines.mlx_batch import MlxSlots

    monkeypatch.delenv(engines.DISABLE_ENV, raising=False)
    assert engine_factory("mlx") is MlxSlots
    assert engine_factory("llama") is LlamaSlots
