"""`hostler models import | rm | show`: links, never copies; removes only what hostler made.

The CLI without Redis (it waits out the client's retries) and an imported model served by a
running stack are test_store_e2e.py's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hostler.worker.cli.main import main
from hostler.worker.models.registry import scan
from hostler.worker.models.store import ModelStoreError, import_model, remove_model


def _mlx_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 4096}))
    (path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return path


def test_import_links_a_gguf_without_copying_or_moving_it(tmp_path: Path, user_gguf: Path) -> None:
    models = tmp_path / "models"
    before = (user_gguf.stat().st_ino, user_gguf.read_bytes())
    folder = import_model(user_gguf, models)
    assert folder == models / "Tiny-Chat.Q4_K_M"
    link = folder / user_gguf.name
    assert link.is_symlink() and link.resolve() == user_gguf.resolve()
    assert (user_gguf.stat().st_ino, user_gguf.read_bytes()) == before
    manifest = scan(models).models["Tiny-Chat.Q4_K_M"]
    assert manifest.engine == "llama" and manifest.has_chat_template
    assert manifest.size_bytes == user_gguf.stat().st_size
    recorded = yaml.safe_load((folder / "model.yaml").read_text())
    assert recorded["source"] == {"kind": "import", "path": str(user_gguf.resolve()), "links": [user_gguf.name]}
    # The id lives in model.yaml: the same on every later scan (a restart), whatever else changes.
    (models / "zzz.gguf").symlink_to(user_gguf)
    assert "Tiny-Chat.Q4_K_M" in scan(models).models


def test_import_an_mlx_folder_and_choose_the_id(tmp_path: Path) -> None:
    source = _mlx_folder(tmp_path / "mlx" / "Qwen2.5-0.5B-Instruct-4bit")
    models = tmp_path / "models"
    folder = import_model(source, models, "qwen-mlx")
    manifest = scan(models).models["qwen-mlx"]
    assert manifest.engine == "mlx" and manifest.path.resolve() == source.resolve()
    assert manifest.size_bytes == sum(p.stat().st_size for p in source.iterdir())
    assert (folder / "model").is_symlink()


def test_import_refusals_name_what_was_wrong(tmp_path: Path, user_gguf: Path) -> None:
    models = tmp_path / "models"
    import_model(user_gguf, models, "taken")
    cases = [
        (user_gguf, "taken", "already used"),
        (tmp_path / "missing.gguf", None, "does not exist"),
        (user_gguf, "../escape", "invalid model id"),
        (user_gguf, "a/b", "invalid model id"),
    ]
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    cases.append((notes, None, "not a GGUF file"))
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    cases.append((empty, None, "not an MLX model"))
    for path, model_id, message in cases:
        with pytest.raises(ModelStoreError, match=message):
            import_model(path, models, model_id)
    assert set(scan(models).models) == {"taken"}
    assert not [p for p in models.iterdir() if p.name.startswith(".import-")]


def test_rm_removes_the_link_and_manifest_and_the_target_survives(tmp_path: Path, user_gguf: Path) -> None:
    models = tmp_path / "models"
    import_model(user_gguf, models, "linked")
    content = user_gguf.read_bytes()
    removed = remove_model(models, "linked")
    assert not (models / "linked").exists() and "linked" not in scan(models).models
    assert user_gguf.read_bytes() == content and not removed.kept
    # A link placed straight into the models directory: the link goes, its target stays.
    (models / "direct.gguf").symlink_to(user_gguf)
    remove_model(models, "direct")
    assert not (models / "direct.gguf").exists() and user_gguf.read_bytes() == content


def test_rm_refuses_what_hostler_did_not_make(tmp_path: Path, user_gguf: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copyfile(user_gguf, models / "handmade.gguf")
    with pytest.raises(ModelStoreError, match="by hand"):
        remove_model(models, "handmade")
    jan = models / "jan-model"
    jan.mkdir()
    shutil.copyfile(user_gguf, jan / "w.gguf")
    (jan / "model.json").write_text(json.dumps({"id": "jan-model", "engine": "nitro"}))
    with pytest.raises(ModelStoreError, match="records no source"):
        remove_model(models, "jan-model")
    with pytest.raises(ModelStoreError, match="no model 'nope'"):
        remove_model(models, "nope")
    assert (models / "handmade.gguf").is_file() and (jan / "w.gguf").is_file()


def test_rm_keeps_files_a_person_added_to_the_folder(tmp_path: Path, user_gguf: Path) -> None:
    models = tmp_path / "models"
    folder = import_model(user_gguf, models, "linked")
    (folder / "notes.md").write_text("mine")
    removed = remove_model(models, "linked")
    assert removed.kept == [folder / "notes.md"] and (folder / "notes.md").read_text() == "mine"
    assert not (folder / user_gguf.name).exists() and user_gguf.exists()


def test_every_new_command_has_help_with_an_example() -> None:
    for command in (["models", "pull"], ["models", "import"], ["models", "rm"], ["models", "show"], ["hardware"]):
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0 and "Example: hostler" in result.output, result.output
