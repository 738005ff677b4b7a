"""A local HTTP server that serves real files at the Hugging Face hub's URL layout.

It answers what huggingface-hub asks (HF_ENDPOINT points at it):
- GET /api/models/{owner}/{name}[/revision/{rev}]  -> {"id", "sha", "siblings": [{"rfilename", "size", ...}]}
- HEAD|GET /{owner}/{name}/resolve/{rev}/{path}     -> the bytes, with ETag (the sha256, as for LFS files),
  X-Repo-Commit, Content-Length, Accept-Ranges, and 206 answers to "Range: bytes=N-"
- unknown repos, revisions and files -> 404 with the X-Error-Code the hub sends.
Faults for tests: cut the connection after N bytes of a file once, or stall there until released.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    revisions: tuple[str, ...] = ("main",)


@dataclass
class Fault:
    after_bytes: int
    kind: str  # "drop": close the connection; "stall": wait for `release`, then close
    times: int = 1


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class LocalHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    faults: dict[str, Fault] = field(default_factory=dict)  # "owner/name/path" -> fault
    requests: list[Request] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def add(self, repo_id: str, files: dict[str, bytes | Path], **options: object) -> Repo:
        data = {name: value.read_bytes() if isinstance(value, Path) else value for name, value in files.items()}
        repo = Repo(data, **options)  # type: ignore[arg-type]
        self.repos[repo_id] = repo
        return repo

    def downloads(self, name: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + name)]

    def bytes_sent(self, name: str) -> int:
        """What GET requests for `name` asked for, in all (a resumed download asks only for the rest)."""
        repo_file = next(data for repo in self.repos.values() for n, data in repo.files.items() if n == name)
        total = 0
        for request in self.downloads(name):
            start = int(request.range[len("bytes=") : -1]) if request.range else 0
            total += len(repo_file) - start
        return total


_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?/?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: LocalHub  # set on the subclass serve_hub makes

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append(
            Request(self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
        )
        if match := _API.match(path):
            self._model_info(match["repo"], match["rev"] or "main", body)
        elif match := _RESOLVE.match(path):
            self._resolve(match["repo"], match["rev"], match["path"], body)
        else:
            self._error(404, "EntryNotFound", "no such endpoint", body)

    def _repo(self, repo_id: str, revision: str, body: bool) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", body)
            return None
        if revision not in repo.revisions and revision != repo.commit:
            self._error(404, "RevisionNotFound", "Invalid rev id", body)
            return None
        return repo

    def _model_info(self, repo_id: str, revision: str, body: bool) -> None:
        repo = self._repo(repo_id, revision, body)
        if repo is None:
            return
        siblings = [
            {
                "rfilename": name,
                "size": len(data),
                "blobId": hashlib.sha1(data).hexdigest(),
                "lfs": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134},
            }
            for name, data in sorted(repo.files.items())
        ]
        payload = json.dumps({"id": repo_id, "modelId": repo_id, "sha": repo.commit, "siblings": siblings})
        self._send(200, {"Content-Type": "application/json"}, payload.encode(), body)

    def _resolve(self, repo_id: str, revision: str, name: str, body: bool) -> None:
        repo = self._repo(repo_id, revision, body)
        if repo is None:
            return
        data = repo.files.get(name)
        if data is None:
            self._error(404, "EntryNotFound", f"{name} does not exist", body, commit=repo.commit)
            return
        start = 0
        status = 200
        headers = {
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "X-Repo-Commit": repo.commit,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        requested = self.headers.get("Range")
        if requested and (m := re.fullmatch(r"bytes=(\d+)-", requested)):
            start = int(m[1])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        part = data[start:]
        if not body:
            headers["Content-Length"] = str(len(part))
            self._send(status, headers, b"", False)
            return
        fault = self.hub.faults.get(f"{repo_id}/{name}")
        if fault is not None and fault.times > 0 and start < fault.after_bytes:
            fault.times -= 1
            self._send_broken(status, headers, part, fault.after_bytes - start, fault.kind)
            return
        self._send(status, headers, part, True)

    def _send_broken(self, status: int, headers: dict[str, str], part: bytes, cut: int, kind: str) -> None:
        # Promises the whole length, sends `cut` bytes, then goes silent or hangs up.
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(part))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(part[:cut])
        self.wfile.flush()
        if kind == "stall":
            self.hub.release.wait(120)
        self.close_connection = True

    def _error(self, status: int, code: str, message: str, body: bool, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, headers, json.dumps({"error": message}).encode(), body)

    def _send(self, status: int, headers: dict[str, str], payload: bytes, body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)


@contextmanager
def serve_hub() -> Iterator[LocalHub]:
    hub = LocalHub()
    handler = type("BoundHubHandler", (HubHandler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="local-hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
