"""What a pull fetches: the files of a Hugging Face hub repo at one commit, and the choice among them.

`plan_pull` asks the hub which files a repo has at a revision (pinning the commit it is at)
and picks one GGUF (by --file, by --quant, or the only one) with its split parts, or a whole
MLX folder. `pull.py` fetches and installs what the plan names.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from hostler.worker.memory.files import MLX_CONFIG, MLX_WEIGHTS, lists_mlx_model

from .registry import check_model_id
from .store import suggest_id

__all__ = ["PullError", "PullPlan", "RemoteFile", "describe_exception", "hub_endpoint", "plan_pull"]

Engine = Literal["llama", "mlx"]
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# What an MLX folder needs; READMEs, images and other frameworks' weights are left on the hub.
_MLX_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".tiktoken", ".jinja")


class PullError(RuntimeError):
    """A pull that cannot go on; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None


@dataclass(frozen=True)
class PullPlan:
    repo: str
    ref: str  # the revision asked for: a branch, tag or commit
    commit: str  # the commit it was at, which every file is fetched from
    engine: Engine
    model_id: str
    files: tuple[RemoteFile, ...]
    weights: str | None  # the GGUF model.yaml names (the first part of a split); None for MLX
    endpoint: str

    @property
    def total_bytes(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)


def hub_endpoint() -> str:
    """HF_ENDPOINT, read now (huggingface-hub reads it once, at import)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def plan_pull(
    repo: str,
    *,
    file: str | None = None,
    quant: str | None = None,
    revision: str = "main",
    model_id: str | None = None,
    token: str | None = None,
) -> PullPlan:
    """Asks the hub what `repo` holds at `revision` and chooses the files to fetch."""
    if file is not None and quant is not None:
        raise PullError("give --file or --quant, not both")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo):
        raise PullError(f"invalid repo {repo!r}: expected OWNER/NAME, e.g. HuggingFaceTB/SmolLM2-135M-Instruct-GGUF")
    endpoint = hub_endpoint()
    commit, remote = _list_files(repo, revision, endpoint, token)
    by_name = {f.name: f for f in remote}
    ggufs = sorted(n for n in by_name if n.lower().endswith(".gguf"))
    if file is not None:
        if file not in by_name:
            raise PullError(f"{repo} has no file {file!r} at {revision}; its GGUF files: {_listing(ggufs)}")
        if not file.lower().endswith(".gguf"):
            raise PullError(f"--file names one GGUF file; {file!r} is not (leave --file out to pull an MLX repo)")
        chosen = _with_split_parts(file, ggufs)
    elif quant is not None:
        chosen = _by_quant(repo, quant, ggufs)
    elif ggufs:
        groups = _split_groups(ggufs)
        if len(groups) > 1:
            raise PullError(
                f"{repo} has {len(groups)} GGUF models; choose one with --quant (e.g. Q4_K_M) or --file: "
                f"{_listing([g[0] for g in groups])}"
            )
        chosen = groups[0]
    elif lists_mlx_model(by_name):
        mlx_files = sorted(n for n in by_name if n.endswith(_MLX_SUFFIXES) and "/" not in n)
        name = model_id or suggest_id(repo.split("/", 1)[1])
        return PullPlan(
            repo, revision, commit, "mlx", _checked_id(name), tuple(by_name[n] for n in mlx_files), None, endpoint
        )
    else:
        raise PullError(
            f"{repo} has no GGUF file and is not an MLX model ({MLX_CONFIG} and {MLX_WEIGHTS}); "
            f"its files: {_listing(sorted(by_name))}"
        )
    weights = chosen[0]
    default_id = _SPLIT_RE.sub("", PurePosixPath(weights).name)
    default_id = default_id[: -len(".gguf")] if default_id.lower().endswith(".gguf") else default_id
    name = model_id or suggest_id(default_id)
    files = tuple(by_name[n] for n in chosen)
    return PullPlan(repo, revision, commit, "llama", _checked_id(name), files, weights, endpoint)


# -- choosing files ------------------------------------------------------------------


def _list_files(repo: str, revision: str, endpoint: str, token: str | None) -> tuple[str, list[RemoteFile]]:
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise PullError("pulling needs huggingface-hub on this host: pip install 'hostler[pull]'") from None
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise PullError(f"{repo} has no revision {revision!r} on {endpoint}") from None
    except RepositoryNotFoundError:
        raise PullError(
            f"no model repo {repo!r} on {endpoint} (or it is private or gated: set HF_TOKEN to a token that reads it)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the HTTP library's errors differ between huggingface-hub versions
        raise PullError(f"cannot list {repo} on {endpoint}: {describe_exception(exc)}") from None
    if not info.sha:
        raise PullError(f"{endpoint} did not say which commit {repo}@{revision} is")
    siblings = info.siblings or []
    return info.sha, [RemoteFile(s.rfilename, s.size) for s in siblings]


def _by_quant(repo: str, quant: str, ggufs: list[str]) -> list[str]:
    wanted = quant.lower()
    groups = [g for g in _split_groups(ggufs) if wanted in PurePosixPath(g[0]).name.lower()]
    if not groups:
        raise PullError(f"no GGUF file in {repo} matches --quant {quant!r}; its GGUF files: {_listing(ggufs)}")
    if len(groups) > 1:
        raise PullError(
            f"--quant {quant!r} matches {len(groups)} GGUF files in {repo}; name one with --file: "
            f"{_listing([g[0] for g in groups])}"
        )
    return groups[0]


def _split_groups(ggufs: list[str]) -> list[list[str]]:
    """GGUF files grouped so that the parts of a split model (-00001-of-00003) count as one."""
    groups: dict[str, list[str]] = {}
    for name in ggufs:
        groups.setdefault(_SPLIT_RE.sub("", name), []).append(name)
    return [sorted(parts) for _, parts in sorted(groups.items())]


def _with_split_parts(name: str, ggufs: list[str]) -> list[str]:
    if not _SPLIT_RE.search(name):
        return [name]
    stem = _SPLIT_RE.sub("", name)
    return sorted(n for n in ggufs if _SPLIT_RE.sub("", n) == stem)


def _checked_id(name: str) -> str:
    try:
        return check_model_id(name)
    except ValueError as exc:
        raise PullError(f"{exc}; choose one with --id") from None


def _listing(names: list[str], most: int = 20) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def describe_exception(exc: BaseException) -> str:
    """An exception from the hub or the HTTP library as one line: its type and first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
