"""Models on disk: ids from file stems and model.yaml, bad entries reported, never paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostler.worker.models.registry import ModelIdError, check_model_id, scan


def test_ids_come_from_stems_and_manifests(tmp_path: Path, model_files: dict[str, Path]) -> None:
    (tmp_path / "smollm2-135m.gguf").symlink_to(model_files["tiny"])
    folder = tmp_path / "my-folder"
    folder.mkdir()
    (folder / "weights.gguf").symlink_to(model_files["tiny-base"])
    (folder / "model.yaml").write_text("id: custom\nfiles: [weights.gguf]\nctx_len: 1024\nchat_template: '{{ x }}'\n")
    catalog = scan(tmp_path)
    assert set(catalog.models) == {"smollm2-135m", "custom"}
    custom = catalog.models["custom"]
    assert custom.load.n_ctx == 1024 and custom.has_chat_template and custom.chat_template == "{{ x }}"
    assert catalog.models["smollm2-135m"].has_chat_template
    assert not catalog.problems


def test_manifest_cannot_point_outside_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "model.yaml").write_text("id: evil\nfiles: [../../etc/passwd]\n")
    catalog = scan(tmp_path)
    assert "evil" not in catalog.models
    assert any("inside" in p for p in catalog.problems)


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/b", "", "a..b", ".hidden", "x" * 200])
def test_model_ids_are_names_not_paths(bad: str) -> None:
    with pytest.raises(ModelIdError):
        check_model_id(bad)


def test_a_file_outside_the_folder_loads_only_from_an_allow_listed_directory(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    weights = shared / "weights.gguf"
    weights.write_bytes(model_files["tiny"].read_bytes())
    models = tmp_path / "models"
    (models / "linked").mkdir(parents=True)
    (models / "linked" / "model.yaml").write_text(f"id: linked\nfiles: [{weights}]\n")
    refused = scan(models, allow_dirs=[])
    assert "linked" not in refused.models
    assert any("--allow-dir" in p for p in refused.problems)
    allowed = scan(models, allow_dirs=[shared.resolve()])
    assert allowed.models["linked"].path == weights.resolve()
    # The allow-list is a directory, not a prefix of names: a sibling stays refused.
    (tmp_path / "shared-evil").mkdir()
    (tmp_path / "shared-evil" / "w.gguf").write_bytes(b"GGUF")
    (models / "linked" / "model.yaml").write_text(f"id: linked\nfiles: [{tmp_path / 'shared-evil' / 'w.gguf'}]\n")
    assert "linked" not in scan(models, allow_dirs=[shared.resolve()]).models
    # A relative path out of the folder counts the same: refused unless it lands in an allowed directory.
    (models / "linked" / "model.yaml").write_text("id: linked\nfiles: [../../shared/weights.gguf]\n")
    assert "linked" not in scan(models, allow_dirs=[]).models
    assert "linked" in scan(models, allow_dirs=[shared.resolve()]).models
