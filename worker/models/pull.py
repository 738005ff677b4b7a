"""Downloads a model from the Hugging Face hub into a models directory, resumably.

`plan_pull` asks the hub which files a repo has at a revision and picks what to fetch: one
GGUF (by --file, by --quant, or the only one), its split parts with it, or a whole MLX folder.
`pull` downloads them with huggingface-hub (HF_ENDPOINT and the HF token are honoured) into
`<models>/.pull-<id>/` (hidden from the registry), then writes model.yaml and renames the folder
to `<models>/<id>`, so a half-downloaded model is never listed. A killed pull leaves its
`.part` files behind and the next pull of the same model continues them with a Range request;
hf_hub_download itself starts a killed download over, which is why the files are fetched
with its lower-level pieces.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO, Literal, cast
from urllib.parse import urlparse

import yaml

from .registry import check_model_id
from .store import MANIFEST, ModelStoreError, existing_entry, suggest_id

__all__ = ["PullError", "PullPlan", "PullProgress", "Pulled", "RemoteFile", "plan_pull", "pull"]

Engine = Literal["llama", "mlx"]
PULL_PREFIX = ".pull-"
_PARTIAL = ".partial"
_ORIGIN = ".origin"  # repo@commit the staged files come from
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
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


@dataclass(frozen=True)
class PullProgress:
    file: str
    file_done: int
    file_total: int | None
    done: int  # every file of the pull together
    total: int | None


@dataclass(frozen=True)
class Pulled:
    model_id: str
    folder: Path
    files: tuple[str, ...]
    size_bytes: int
    already: bool = False  # the same files were there already; nothing was downloaded


ProgressCallback = Callable[[PullProgress], None]


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
    elif "config.json" in by_name and any(re.fullmatch(r"model.*\.safetensors", n) for n in by_name):
        mlx_files = sorted(n for n in by_name if n.endswith(_MLX_SUFFIXES) and "/" not in n)
        name = model_id or suggest_id(repo.split("/", 1)[1])
        return PullPlan(
            repo, revision, commit, "mlx", _checked_id(name), tuple(by_name[n] for n in mlx_files), None, endpoint
        )
    else:
        raise PullError(
            f"{repo} has no GGUF file and is not an MLX model (config.json and model*.safetensors); "
            f"its files: {_listing(sorted(by_name))}"
        )
    weights = chosen[0]
    default_id = _SPLIT_RE.sub("", PurePosixPath(weights).name)
    default_id = default_id[: -len(".gguf")] if default_id.lower().endswith(".gguf") else default_id
    name = model_id or suggest_id(default_id)
    files = tuple(by_name[n] for n in chosen)
    return PullPlan(repo, revision, commit, "llama", _checked_id(name), files, weights, endpoint)


def pull(
    plan: PullPlan,
    models_dir: Path,
    *,
    progress: ProgressCallback | None = None,
    token: str | None = None,
) -> Pulled:
    """Downloads the plan's files (continuing any earlier partial pull) and installs the model."""
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / plan.model_id
    same = _already_pulled(target, plan)
    if same is not None:
        return same
    existing = existing_entry(models_dir, plan.model_id)
    if existing is not None:
        raise PullError(
            f"model id {plan.model_id!r} is taken by {existing} (from another source); "
            f"pull it under another id with --id, or remove that one with `hostler models rm {plan.model_id}`"
        )
    staging = models_dir / f"{PULL_PREFIX}{plan.model_id}"
    staging.mkdir(exist_ok=True)
    with _locked(staging / ".lock", plan.model_id):
        _claim(staging, plan)
        done = 0
        for remote in plan.files:
            done += _fetch(plan, remote, staging, done, progress, token)
        _write_manifest(staging, plan)
        shutil.rmtree(staging / _PARTIAL, ignore_errors=True)
        (staging / _ORIGIN).unlink(missing_ok=True)
        (staging / ".lock").unlink(missing_ok=True)
        if existing_entry(models_dir, plan.model_id) is not None:
            raise PullError(f"model id {plan.model_id!r} appeared in {models_dir} meanwhile; files kept in {staging}")
        staging.rename(target)
    return Pulled(plan.model_id, target, tuple(f.name for f in plan.files), done)


def _claim(staging: Path, plan: PullPlan) -> None:
    """Keeps what an earlier pull of the same repo and commit left; anything else starts over."""
    origin = f"{plan.repo}@{plan.commit}"
    marker = staging / _ORIGIN
    if marker.is_file() and marker.read_text() == origin:
        return
    for entry in staging.iterdir():
        if entry.name == ".lock":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    marker.write_text(origin)


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
        raise PullError(f"cannot list {repo} on {endpoint}: {_reason(exc)}") from None
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


# -- downloading ---------------------------------------------------------------------


def _fetch(
    plan: PullPlan, remote: RemoteFile, staging: Path, before: int, progress: ProgressCallback | None, token: str | None
) -> int:
    """Downloads one file into staging (continuing its .part); returns its size."""
    from huggingface_hub import get_hf_file_metadata, get_token, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils.tqdm import disable_progress_bars

    final = _inside(staging, remote.name)
    if final.is_file():  # only a verified download is renamed to its final name
        size = final.stat().st_size
        _report(progress, plan, remote.name, size, size, before + size)
        return size
    url = hf_hub_url(plan.repo, remote.name, revision=plan.commit, endpoint=plan.endpoint)
    try:
        meta = get_hf_file_metadata(url, token=token)
    except Exception as exc:  # noqa: BLE001 - see _list_files
        raise PullError(f"cannot reach {remote.name} in {plan.repo}: {_reason(exc)}") from None
    if meta.etag is None:
        raise PullError(f"{plan.endpoint} sent no ETag for {remote.name}: it does not look like a Hugging Face hub")
    part = _inside(staging / _PARTIAL, remote.name + ".part")
    stamp = part.with_name(part.name + ".etag")
    part.parent.mkdir(parents=True, exist_ok=True)
    if not part.exists() or not stamp.exists() or stamp.read_text() != meta.etag:
        part.write_bytes(b"")  # another version of the file, or none yet: start over
        stamp.write_text(meta.etag)
    total = meta.size if meta.size is not None else remote.size
    resume = part.stat().st_size
    if total is not None and resume > total:
        part.write_bytes(b"")
        resume = 0
    secret = token or get_token()  # HF_TOKEN, or the token `hf auth login` stored
    headers: dict[str, str] = {}
    # A CDN gets a signed URL and never the token.
    if secret and urlparse(meta.location).netloc == urlparse(plan.endpoint).netloc:
        headers["authorization"] = f"Bearer {secret}"
    disable_progress_bars()  # hostler draws its own: one per pull, or events on a channel
    with part.open("ab") as raw:
        sink = _ProgressSink(raw, lambda n: _report(progress, plan, remote.name, n, total, before + n))
        _report(progress, plan, remote.name, resume, total, before + resume)
        try:
            http_get(meta.location, cast(BinaryIO, sink), resume_size=resume, headers=headers, expected_size=total)
        except Exception as exc:  # noqa: BLE001 - see _list_files
            raise PullError(
                f"download of {remote.name} stopped at {raw.tell()} bytes: {_reason(exc)}; "
                "run the same pull again to continue it"
            ) from None
    if _SHA256_RE.match(meta.etag) and _sha256(part) != meta.etag:
        part.unlink()
        raise PullError(f"{remote.name}: the downloaded bytes do not match the hub's sha256; run the pull again")
    final.parent.mkdir(parents=True, exist_ok=True)
    part.replace(final)
    stamp.unlink(missing_ok=True)
    return final.stat().st_size


class _ProgressSink:
    """The file object http_get writes to: reports the size after every write.

    http_get may also seek back and truncate (a server that ignored the Range header), so the
    count is the file's position, not a running sum.
    """

    def __init__(self, raw: IO[bytes], on_size: Callable[[int], None]) -> None:
        self._raw = raw
        self._on_size = on_size

    def write(self, data: bytes) -> int:
        written = self._raw.write(data)
        self._on_size(self._raw.tell())
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _report(progress: ProgressCallback | None, plan: PullPlan, name: str, n: int, total: int | None, done: int) -> None:
    if progress is not None:
        progress(PullProgress(name, n, total, done, plan.total_bytes))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inside(folder: Path, name: str) -> Path:
    # Repo file names come from the server: never let one write outside the staging folder.
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise PullError(f"the hub listed a file named {name!r}, which is not a path inside the repo")
    return folder.joinpath(*parts)


@contextmanager
def _locked(path: Path, model_id: str) -> Iterator[None]:
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PullError(f"a pull of {model_id!r} is already running here") from None
        yield


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# -- the manifest --------------------------------------------------------------------


def _write_manifest(folder: Path, plan: PullPlan) -> None:
    data: dict[str, Any] = {"id": plan.model_id, "engine": plan.engine}
    if plan.weights is not None:
        data["files"] = [plan.weights]
    data["source"] = {
        "kind": "pull",
        "repo": plan.repo,
        "revision": plan.commit,
        "ref": plan.ref,
        "endpoint": plan.endpoint,
        "files": [f.name for f in plan.files],
        "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    header = "# Written by `hostler models pull`; `hostler models rm` deletes the files under source.files.\n"
    (folder / MANIFEST).write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def _already_pulled(target: Path, plan: PullPlan) -> Pulled | None:
    manifest = target / MANIFEST
    if not manifest.is_file():
        return None
    try:
        data = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    source = data.get("source") if isinstance(data, dict) else None
    if not isinstance(source, dict) or source.get("kind") != "pull" or source.get("repo") != plan.repo:
        return None
    names = [f.name for f in plan.files]
    if source.get("files") != names or not all((target / n).is_file() for n in names):
        return None
    size = sum((target / n).stat().st_size for n in names)
    return Pulled(plan.model_id, target, tuple(names), size, already=True)


def describe_error(exc: BaseException) -> str:
    """The message a person sees for a failed pull."""
    if isinstance(exc, PullError | ModelStoreError):
        return str(exc)
    return _reason(exc)
