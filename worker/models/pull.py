"""Fetches what a pull plan names into a models directory, resumably, and installs the model.

`pull` downloads the plan's files (pull_plan.py chooses them) with huggingface-hub (HF_ENDPOINT
and the HF token are honoured) into `<models>/.pull-<id>/` (hidden from the registry), then
writes model.yaml and renames the folder to `<models>/<id>`, so a half-downloaded model is
never listed. A killed pull leaves its `.part` files behind and the next pull of the same
model continues them with a Range request; hf_hub_download itself starts a killed download
over, which is why the files are fetched with its lower-level pieces.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO, cast
from urllib.parse import urlparse

import yaml

from .fetch import sha256_of
from .pull_plan import PullError, PullPlan, RemoteFile, describe_exception, plan_pull
from .store import MANIFEST, ModelStoreError, existing_entry

__all__ = ["PullError", "PullPlan", "PullProgress", "Pulled", "RemoteFile", "describe_error", "plan_pull", "pull"]

PULL_PREFIX = ".pull-"
_PARTIAL = ".partial"
_ORIGIN = ".origin"  # repo@commit the staged files come from
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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
        raise PullError(f"cannot reach {remote.name} in {plan.repo}: {describe_exception(exc)}") from None
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
                f"download of {remote.name} stopped at {raw.tell()} bytes: {describe_exception(exc)}; "
                "run the same pull again to continue it"
            ) from None
    if _SHA256_RE.match(meta.etag) and sha256_of(part) != meta.etag:
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
    return describe_exception(exc)
