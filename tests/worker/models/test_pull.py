"""`hostler models pull` against a local server with the hub's URL layout (HF_ENDPOINT).

Real huggingface-hub requests, real files, real interruptions: a connection cut half-way, a
pull process killed half-way and run again (test_pull_e2e.py: rm without Redis, which waits out the
client's retries, and the pulled model served by a worker).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import GGUF_REPO
from hostler.worker.cli.main import main
from hostler.worker.models.pull import PullError, PullProgress, plan_pull, pull
from hostler.worker.models.registry import scan
from local_hub import Fault, LocalHub

MiB = 1024 * 1024
# Bigger than huggingface-hub's 10 MiB download chunk, so a cut-off download has bytes on disk.
BIG_SIZE = 24 * MiB


@pytest.fixture(scope="module")
def big_file() -> bytes:
    return b"GGUF" + os.urandom(BIG_SIZE - 4)


def _sha(data: bytes | Path) -> str:
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def test_quant_picks_one_gguf_and_the_manifest_records_its_source(
    hub: LocalHub, tmp_path: Path, model_files: dict[str, Path]
) -> None:
    models = tmp_path / "models"
    events: list[PullProgress] = []
    plan = plan_pull(GGUF_REPO, quant="q4_k_m")
    assert plan.model_id == "tiny-chat-Q4_K_M" and [f.name for f in plan.files] == ["tiny-chat-Q4_K_M.gguf"]
    pulled = pull(plan, models, progress=events.append)
    folder = models / "tiny-chat-Q4_K_M"
    assert pulled.folder == folder and _sha(folder / "tiny-chat-Q4_K_M.gguf") == _sha(model_files["tiny"])
    manifest = yaml.safe_load((folder / "model.yaml").read_text())
    assert manifest["id"] == "tiny-chat-Q4_K_M" and manifest["engine"] == "llama"
    assert manifest["files"] == ["tiny-chat-Q4_K_M.gguf"]
    source = manifest["source"]
    assert (source["kind"], source["repo"], source["ref"]) == ("pull", GGUF_REPO, "main")
    assert source["revision"] == hub.repos[GGUF_REPO].commit and source["endpoint"] == hub.url
    assert source["files"] == ["tiny-chat-Q4_K_M.gguf"]
    model = scan(models).models["tiny-chat-Q4_K_M"]
    assert model.engine == "llama" and model.has_chat_template
    size = model_files["tiny"].stat().st_size
    assert events[-1].done == events[-1].total == size and events[-1].file_done == size
    assert [e.done for e in events] == sorted(e.done for e in events)
    # Only the hidden staging folder was used, and it is gone.
    assert sorted(p.name for p in models.iterdir()) == ["tiny-chat-Q4_K_M"]
    # The files were fetched at the commit the listing named, not at a moving branch.
    assert all(f"/resolve/{hub.repos[GGUF_REPO].commit}/" in r.path for r in hub.downloads("tiny-chat-Q4_K_M.gguf"))


def test_bad_names_give_clear_errors(hub: LocalHub, tmp_path: Path) -> None:
    hub.add("tester/safetensors-only", {"config.json": b"{}", "README.md": b"x"})
    cases = [
        ({"repo": "tester/nope"}, "no model repo 'tester/nope'"),
        ({"repo": "not a repo"}, "invalid repo"),
        ({"repo": GGUF_REPO, "revision": "v9"}, "has no revision 'v9'"),
        ({"repo": GGUF_REPO}, "has 3 GGUF models; choose one with --quant"),
        ({"repo": GGUF_REPO, "quant": "IQ2_XS"}, "no GGUF file in tester/Tiny-GGUF matches --quant 'IQ2_XS'"),
        ({"repo": GGUF_REPO, "quant": "Q4_K"}, "--quant 'Q4_K' matches 2 GGUF files"),
        ({"repo": GGUF_REPO, "file": "missing.gguf"}, "has no file 'missing.gguf'"),
        ({"repo": GGUF_REPO, "file": "README.md"}, "is not (leave --file out"),
        ({"repo": GGUF_REPO, "quant": "Q8_0", "model_id": "../x"}, "invalid model id"),
        ({"repo": "tester/safetensors-only"}, "has no GGUF file and is not an MLX model"),
    ]
    for kwargs, message in cases:
        repo = str(kwargs.pop("repo"))
        with pytest.raises(PullError, match=re.escape(message)) as caught:
            plan_pull(repo, **kwargs)  # type: ignore[arg-type]
        if "its GGUF files" in str(caught.value) or "choose one with --quant" in str(caught.value):
            assert "tiny-chat-Q8_0.gguf" in str(caught.value)  # the error lists what there is
    runner = CliRunner(env={"HOSTLER_MODELS": str(tmp_path / "models")})
    result = runner.invoke(main, ["models", "pull", GGUF_REPO, "--quant", "Q4_K"])
    assert result.exit_code == 1 and "tiny-chat-Q4_K_M.gguf, tiny-chat-q4_k_s.gguf" in result.output
    unreachable = CliRunner(env={"HF_ENDPOINT": "http://127.0.0.1:1"}).invoke(main, ["models", "pull", GGUF_REPO])
    assert unreachable.exit_code == 1 and "cannot list tester/Tiny-GGUF on http://127.0.0.1:1" in unreachable.output


def test_split_gguf_parts_come_together(hub: LocalHub, tmp_path: Path) -> None:
    parts = {f"big/model-Q8_0-0000{i}-of-00002.gguf": f"part {i}".encode() for i in (1, 2)}
    hub.add("tester/split", {**parts, "model-Q4_0.gguf": b"GGUF small"})
    plan = plan_pull("tester/split", quant="Q8_0")
    assert [f.name for f in plan.files] == sorted(parts) and plan.model_id == "model-Q8_0"
    pull(plan, tmp_path)
    manifest = yaml.safe_load((tmp_path / "model-Q8_0" / "model.yaml").read_text())
    assert manifest["files"] == ["big/model-Q8_0-00001-of-00002.gguf"]
    assert (tmp_path / "model-Q8_0" / "big" / "model-Q8_0-00002-of-00002.gguf").read_bytes() == b"part 2"


def test_an_mlx_repo_is_pulled_as_a_folder(hub: LocalHub, tmp_path: Path, tiny_mlx: Path) -> None:
    files: dict[str, bytes | Path] = {p.name: p for p in tiny_mlx.iterdir() if p.is_file()}
    hub.add("mlx-community/Tiny-4bit", {**files, "README.md": b"# card", "figure.png": b"\x89PNG"})
    plan = plan_pull("mlx-community/Tiny-4bit")
    assert plan.engine == "mlx" and plan.model_id == "Tiny-4bit" and plan.weights is None
    assert {f.name for f in plan.files} == set(files)  # the card and the picture stay on the hub
    pull(plan, tmp_path)
    model = scan(tmp_path).models["Tiny-4bit"]
    assert model.engine == "mlx" and model.path == tmp_path / "Tiny-4bit"
    for name, source in files.items():
        assert _sha(tmp_path / "Tiny-4bit" / name) == _sha(source)  # type: ignore[arg-type]


def test_a_cut_connection_resumes_with_a_range_request(hub: LocalHub, tmp_path: Path, big_file: bytes) -> None:
    hub.add("tester/big", {"Big-Q8_0.gguf": big_file})
    hub.faults["tester/big/Big-Q8_0.gguf"] = Fault(after_bytes=BIG_SIZE // 2 + 1000, kind="drop")
    pulled = pull(plan_pull("tester/big"), tmp_path)
    assert _sha(pulled.folder / "Big-Q8_0.gguf") == _sha(big_file)
    ranges = [r.range for r in hub.downloads("Big-Q8_0.gguf")]
    assert ranges[0] is None and len(ranges) == 2
    assert ranges[1] is not None and int(ranges[1][len("bytes=") : -1]) >= 10 * MiB


def test_a_killed_pull_continues_where_it_stopped(hub: LocalHub, tmp_path: Path, big_file: bytes) -> None:
    hub.add("tester/big", {"Big-Q8_0.gguf": big_file})
    hub.faults["tester/big/Big-Q8_0.gguf"] = Fault(after_bytes=BIG_SIZE // 2, kind="stall")
    models = tmp_path / "models"
    part = models / ".pull-Big-Q8_0" / ".partial" / "Big-Q8_0.gguf.part"
    process = subprocess.Popen(
        [sys.executable, "-m", "hostler.worker", "models", "pull", "tester/big", "--models", str(models)],
        env=dict(os.environ, HF_ENDPOINT=hub.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size >= 10 * MiB):
            assert time.monotonic() < deadline, "the first pull never wrote its first chunk"
            assert process.poll() is None, process.communicate()[0]
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(30)
    kept = part.stat().st_size
    assert 0 < kept < BIG_SIZE and "Big-Q8_0" not in scan(models).models  # half a model is never listed
    result = CliRunner().invoke(main, ["models", "pull", "tester/big", "--models", str(models)])
    assert result.exit_code == 0, result.output
    assert _sha(models / "Big-Q8_0" / "Big-Q8_0.gguf") == _sha(big_file)
    ranges = [r.range for r in hub.downloads("Big-Q8_0.gguf")]
    assert ranges == [None, f"bytes={kept}-"]  # the second run asked only for the rest
    # Progress without a terminal: plain lines, ending with the whole file.
    assert "Big-Q8_0.gguf: 24 MiB of 24 MiB (100%)" in result.output
    assert "pulled Big-Q8_0 (24 MiB)" in result.output
    assert not (models / ".pull-Big-Q8_0").exists()


def test_pulling_again_downloads_nothing_and_a_taken_id_is_refused(
    hub: LocalHub, tmp_path: Path, model_files: dict[str, Path]
) -> None:
    runner = CliRunner(env={"HOSTLER_MODELS": str(tmp_path)})
    first = runner.invoke(main, ["models", "pull", GGUF_REPO, "--quant", "Q8_0"])
    assert first.exit_code == 0, first.output
    gets = len(hub.downloads("tiny-chat-Q8_0.gguf"))
    again = runner.invoke(main, ["models", "pull", GGUF_REPO, "--quant", "Q8_0"])
    assert again.exit_code == 0 and "already here" in again.output
    assert len(hub.downloads("tiny-chat-Q8_0.gguf")) == gets
    (tmp_path / "tiny-chat-Q4_K_M.gguf").symlink_to(model_files["tiny"])
    taken = runner.invoke(main, ["models", "pull", GGUF_REPO, "--quant", "Q4_K_M"])
    assert taken.exit_code == 1 and "is taken by" in taken.output and "--id" in taken.output
    renamed = runner.invoke(main, ["models", "pull", GGUF_REPO, "--quant", "Q4_K_M", "--id", "tiny-q4"])
    assert renamed.exit_code == 0 and "tiny-q4" in scan(tmp_path).models


def test_the_hf_token_is_sent(hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_testtoken123")
    pull(plan_pull(GGUF_REPO, quant="Q8_0"), tmp_path)
    seen = {r.authorization for r in hub.requests}
    assert seen == {"Bearer hf_testtoken123"}


def test_leftovers_of_another_repo_under_the_same_id_are_not_reused(
    hub: LocalHub, tmp_path: Path, model_files: dict[str, Path]
) -> None:
    staging = tmp_path / ".pull-tiny-chat-Q8_0"
    staging.mkdir()
    (staging / ".origin").write_text("someone/else@" + "f" * 40)
    (staging / "tiny-chat-Q8_0.gguf").write_bytes(b"GGUF from another repo")
    pulled = pull(plan_pull(GGUF_REPO, quant="Q8_0"), tmp_path)
    assert _sha(pulled.folder / "tiny-chat-Q8_0.gguf") == _sha(model_files["tiny-base"])
    assert not (pulled.folder / ".origin").exists()
