"""llama.cpp's `llama-server`, built once from the llama.cpp that llama-cpp-python vendors.

The source is the sdist of the installed llama-cpp-python version (`pip download --no-binary`),
so llama-server runs the same llama.cpp as the Python bindings hostler uses. The sdist and the
binary go to ~/.cache/hostler/llama-server-<version>/ and are reused by every later run; the
unpacked source and the build tree are removed once the binary is in place. The sdist's batched
example server (examples/server/server.py) is extracted beside them.

    python scripts/llama_server_build.py          # build (or find) both, print their paths

CMake runs without network: the web UI is neither built (npm) nor downloaded (prebuilt UI
from a Hugging Face bucket), and HTTPS support (OpenSSL, curl) is off: the server only
listens on 127.0.0.1 and is given a local GGUF path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hostler"
DOWNLOAD_TIMEOUT_S = 600.0
CONFIGURE_TIMEOUT_S = 600.0
BUILD_TIMEOUT_S = 3600.0

CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    # Network at configure/build time: the UI (npm build, or a download from a Hugging Face
    # bucket, on by default in this version) and HTTPS. LLAMA_CURL is only a deprecated alias.
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    # One self-contained binary, so the source and build trees can go.
    "-DBUILD_SHARED_LIBS=OFF",
    # Built for this CPU, as llama-cpp-python's default source build is.
    "-DGGML_NATIVE=ON",
)


class BuildUnavailable(RuntimeError):
    """llama-server cannot be built here; the message says why."""


def llama_cpp_python_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError as exc:
        raise BuildUnavailable("llama-cpp-python is not installed, so there is no version to build") from exc


def cache_dir(version: str) -> Path:
    return CACHE_ROOT / f"llama-server-{version}"


def cached_binary(version: str) -> Path | None:
    binary = cache_dir(version) / "llama-server"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    return None


def _run(cmd: list[str], log: Path, timeout: float, what: str, cwd: Path | None = None) -> None:
    with log.open("ab") as handle:
        handle.write(f"\n$ {' '.join(cmd)}\n".encode())
        handle.flush()
        try:
            proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BuildUnavailable(f"{what} did not finish within {timeout:.0f} s (log: {log})") from exc
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2500:]
        raise BuildUnavailable(f"{what} failed with exit code {proc.returncode} (log: {log}):\n{tail}")


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, flush=True)


def ensure_sdist(version: str, quiet: bool = False) -> Path:
    """llama-cpp-python's sdist of this version, downloaded once into the cache directory."""
    target = cache_dir(version)
    archive = target / f"llama_cpp_python-{version}.tar.gz"
    if archive.is_file():
        return archive
    target.mkdir(parents=True, exist_ok=True)
    log = target / "download.log"
    _say(f"downloading the llama-cpp-python {version} sdist (log: {log})", quiet)
    with tempfile.TemporaryDirectory(prefix="sdist-", dir=target) as tmp_name:
        tmp = Path(tmp_name)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        _run([*pip, f"llama-cpp-python=={version}", "-d", str(tmp)], log, DOWNLOAD_TIMEOUT_S, "pip download")
        found = sorted(tmp.glob("llama_cpp_python-*.tar.gz"))
        if not found:
            raise BuildUnavailable(f"pip download produced no llama_cpp_python-*.tar.gz (log: {log})")
        found[0].replace(archive)
    return archive


def ensure_example_server(quiet: bool = False) -> Path:
    """The sdist's batched example server (examples/server/server.py), extracted once.

    It is a single file; other examples called server.py in the sdist are stubs, so the one
    that configures llama.cpp's sequences (n_seq_max) is the one taken.
    """
    version = llama_cpp_python_version()
    target = cache_dir(version) / "example-server" / "server.py"
    if target.is_file():
        return target
    archive = ensure_sdist(version, quiet)
    with tarfile.open(archive) as tar:
        names = [m for m in tar.getmembers() if m.isfile() and m.name.endswith("/server.py") and "/examples/" in m.name]
        names.sort(key=lambda m: (not m.name.endswith("/examples/server/server.py"), m.name))
        for member in names:
            handle = tar.extractfile(member)
            text = handle.read() if handle is not None else b""
            if b"n_seq_max" in text:
                target.parent.mkdir(parents=True, exist_ok=True)
                staged = target.with_suffix(".partial")
                staged.write_bytes(text)
                staged.replace(target)
                return target
    raise BuildUnavailable(f"the llama-cpp-python {version} sdist has no batched examples/*/server.py")


def ensure_llama_server(jobs: int = 2, quiet: bool = False) -> Path:
    """The cached llama-server for the installed llama-cpp-python; builds it the first time.

    Raises BuildUnavailable, with the reason, where it cannot be built.
    """
    version = llama_cpp_python_version()
    found = cached_binary(version)
    if found is not None:
        return found
    missing = [tool for tool in ("cmake", "c++", "cc") if shutil.which(tool) is None]
    if missing:
        raise BuildUnavailable(f"cannot build llama-server: {', '.join(missing)} not found on PATH")
    archive = ensure_sdist(version, quiet)
    target = cache_dir(version)
    log = target / "build.log"
    log.write_text(f"llama-server build for llama-cpp-python {version}, {time.ctime()}\n")
    with tempfile.TemporaryDirectory(prefix="llama-server-build-", dir=target) as tmp_name:
        tmp = Path(tmp_name)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        roots = [p for p in tmp.iterdir() if p.is_dir() and (p / "vendor" / "llama.cpp" / "CMakeLists.txt").exists()]
        if not roots:
            raise BuildUnavailable("the sdist has no vendor/llama.cpp/CMakeLists.txt")
        source = roots[0] / "vendor" / "llama.cpp"
        build = tmp / "build"
        _say(f"llama-server: configuring llama.cpp from the {version} sdist with CMake (log: {log})", quiet)
        _run(
            ["cmake", "-B", str(build), "-S", str(source), *CMAKE_OPTIONS], log, CONFIGURE_TIMEOUT_S, "cmake configure"
        )
        started = time.monotonic()
        _say(
            f"llama-server: building (cmake --build --target llama-server -j{jobs}; tens of minutes on 2 cores)", quiet
        )
        cmd = ["cmake", "--build", str(build), "--target", "llama-server", f"-j{jobs}"]
        _run(cmd, log, BUILD_TIMEOUT_S, "cmake --build")
        built = build / "bin" / "llama-server"
        if not built.is_file():
            raise BuildUnavailable(f"the build finished but {built} does not exist (log: {log})")
        staged = target / "llama-server.partial"
        shutil.copy2(built, staged)
        staged.replace(target / "llama-server")  # atomic: a half-copied binary is never "cached"
        _say(f"llama-server: built in {time.monotonic() - started:.0f} s -> {target / 'llama-server'}", quiet)
    return target / "llama-server"


def main() -> None:
    try:
        print(ensure_llama_server())
        print(ensure_example_server())
    except BuildUnavailable as exc:
        print(f"llama-server unavailable: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
