"""Jan and cortex.cpp model folders are read as they are, beside hostler's own, never rewritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jinja2
import pytest
from hostler.worker.models.formats import jinja_from_prompt_template
from hostler.worker.models.registry import scan

TINYLLAMA_TEMPLATE = "<|system|>\n{system_message}</s>\n<|user|>\n{prompt}</s>\n<|assistant|>"


def _jan_folder(models: Path, tiny: Path, *, engine: str = "nitro") -> Path:
    folder = models / "tinyllama-1.1b"
    folder.mkdir(parents=True)
    shutil.copyfile(tiny, folder / "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf")
    manifest = {
        "sources": [
            {
                "filename": "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
                "url": "https://huggingface.co/TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF/resolve/main/"
                "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
            }
        ],
        "id": "tinyllama-1.1b",
        "object": "model",
        "name": "TinyLlama Chat 1.1B Q4",
        "version": "1.0",
        "format": "gguf",
        "settings": {"ctx_len": 4096, "prompt_template": TINYLLAMA_TEMPLATE, "ngl": 22, "cpu_threads": 3},
        "parameters": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 2048, "stop": []},
        "metadata": {"author": "TinyLlama", "tags": ["Tiny"], "size": 669000000},
        "engine": engine,
    }
    (folder / "model.json").write_text(json.dumps(manifest, indent=2))
    return folder


def _cortex_folder(models: Path, tiny: Path) -> Path:
    folder = models / "cortex.so" / "tinyllama" / "1b-gguf"
    folder.mkdir(parents=True)
    shutil.copyfile(tiny, folder / "model.gguf")
    # cortex writes the absolute path of the file beside its manifest.
    (folder / "model.yml").write_text(
        "# BEGIN GENERAL GGUF METADATA\n"
        "id: tinyllama:1b-gguf\n"
        "model: tinyllama:1b-gguf\n"
        "name: tinyllama\n"
        "version: 1\n"
        f"files:\n  - {folder / 'model.gguf'}\n"
        "# END GENERAL GGUF METADATA\n"
        "stop:\n  - </s>\n"
        "stream: true\n"
        "max_tokens: 2048\n"
        "engine: llama-cpp\n"
        "prompt_template: |-\n  <|user|>\n  {prompt}</s>\n  <|assistant|>\n"
        "ctx_len: 2048\n"
        "ngl: 33\n"
    )
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_jan_model_json_is_read_with_its_own_field_names(tmp_path: Path, model_files: dict[str, Path]) -> None:
    folder = _jan_folder(tmp_path, model_files["tiny-base"])
    before = _snapshot(folder)
    manifest = scan(tmp_path).models["tinyllama-1.1b"]
    assert manifest.engine == "llama" and manifest.path == folder / "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
    assert (manifest.load.n_ctx, manifest.load.n_gpu_layers, manifest.load.n_threads) == (4096, 22, 3)
    assert manifest.has_chat_template and manifest.chat_template is not None  # the GGUF has none: Jan's it is
    assert _snapshot(folder) == before  # read, never rewritten


def test_jan_prompt_template_becomes_a_jinja_chat_template(tmp_path: Path, model_files: dict[str, Path]) -> None:
    _jan_folder(tmp_path, model_files["tiny-base"])
    template = scan(tmp_path).models["tinyllama-1.1b"].chat_template
    assert template is not None
    render = jinja2.Environment().from_string(template).render
    one = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    # One exchange renders exactly as Jan fills the template in.
    expected = TINYLLAMA_TEMPLATE.replace("{system_message}", "Be brief.").replace("{prompt}", "Hi")
    assert render(messages=one, add_generation_prompt=True) == expected
    # A conversation goes on in the same pattern; without a system message its slot stays empty.
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": 'Bye "now" {x}'},
    ]
    assert render(messages=turns, add_generation_prompt=True) == (
        '<|system|>\n</s>\n<|user|>\nHi</s>\n<|assistant|>Hello!</s>\n<|user|>\nBye "now" {x}</s>\n<|assistant|>'
    )


def test_jinja_templates_pass_through_unchanged() -> None:
    jinja = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert jinja_from_prompt_template(jinja) == jinja
    assert jinja_from_prompt_template("no placeholders at all") == "no placeholders at all"


def test_cortex_nested_model_yml_with_absolute_files(tmp_path: Path, model_files: dict[str, Path]) -> None:
    folder = _cortex_folder(tmp_path, model_files["tiny-base"])
    before = _snapshot(folder)
    catalog = scan(tmp_path, allow_dirs=[])
    assert not catalog.problems
    # cortex's id holds ':', which a hostler id cannot: it is kept, with '-' for ':'.
    manifest = catalog.models["tinyllama-1b-gguf"]
    assert manifest.engine == "llama" and manifest.path == folder / "model.gguf"
    assert (manifest.load.n_ctx, manifest.load.n_gpu_layers) == (2048, 33)
    assert manifest.chat_template is not None and "{{" in manifest.chat_template
    assert manifest.entry == folder
    assert _snapshot(folder) == before


def test_cortex_absolute_file_outside_its_folder_stays_refused(tmp_path: Path, model_files: dict[str, Path]) -> None:
    folder = _cortex_folder(tmp_path / "models", model_files["tiny-base"])
    outside = tmp_path / "elsewhere.gguf"
    shutil.copyfile(model_files["tiny-base"], outside)
    text = (folder / "model.yml").read_text().replace(str(folder / "model.gguf"), str(outside))
    (folder / "model.yml").write_text(text)
    catalog = scan(tmp_path / "models", allow_dirs=[])
    assert not catalog.models and any("--allow-dir" in p for p in catalog.problems)


def test_side_by_side_with_hostler_files_and_folders(tmp_path: Path, model_files: dict[str, Path]) -> None:
    _jan_folder(tmp_path, model_files["tiny-base"])
    _cortex_folder(tmp_path, model_files["tiny"])
    (tmp_path / "plain.gguf").symlink_to(model_files["tiny"])
    own = tmp_path / "own"
    own.mkdir()
    (own / "w.gguf").symlink_to(model_files["tiny"])
    (own / "model.yaml").write_text("id: mine\nfiles: [w.gguf]\nload: {n_ctx: 1024}\n")
    catalog = scan(tmp_path)
    assert set(catalog.models) == {"tinyllama-1.1b", "tinyllama-1b-gguf", "plain", "mine"}
    assert catalog.models["mine"].load.n_ctx == 1024
    assert not catalog.problems


@pytest.mark.parametrize("engine", ["openai", "anthropic"])
def test_a_jan_remote_api_model_is_a_problem_line_not_a_crash(
    tmp_path: Path, model_files: dict[str, Path], engine: str
) -> None:
    _jan_folder(tmp_path, model_files["tiny-base"], engine=engine)
    catalog = scan(tmp_path)
    assert not catalog.models
    assert any(engine in p and "not one hostler runs" in p for p in catalog.problems)


def test_jan_engine_names_all_mean_llama_cpp(tmp_path: Path, model_files: dict[str, Path]) -> None:
    for engine in ("nitro", "llama-cpp", "cortex.llamacpp"):
        models = tmp_path / engine
        _jan_folder(models, model_files["tiny-base"], engine=engine)
        assert scan(models).models["tinyllama-1.1b"].engine == "llama"


def test_jan_file_named_only_by_its_url(tmp_path: Path, model_files: dict[str, Path]) -> None:
    folder = _jan_folder(tmp_path, model_files["tiny-base"])
    data = json.loads((folder / "model.json").read_text())
    del data["sources"][0]["filename"]
    (folder / "model.json").write_text(json.dumps(data))
    (folder / "other.gguf").symlink_to(model_files["tiny"])  # two GGUFs: the URL decides
    assert scan(tmp_path).models["tinyllama-1.1b"].path.name == "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"


def test_a_broken_model_json_is_a_problem_line(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{not json")
    catalog = scan(tmp_path)
    assert not catalog.models and any("not valid JSON" in p for p in catalog.problems)
