"""What a new user does first: the README's run command, as written, from a fresh checkout.

The suite itself runs on an editable install, which would hide a source folder shadowing the
installed package; this test makes a regular install into a fresh venv of a copy of the
checkout and starts `hostler up` from that copy's root with an empty HOME.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.e2e

# Lines that mean a process hostler started died or could not import itself.
CRASH_SIGNS = ("Traceback", "ModuleNotFoundError", "ImportError", "crashing", "exited with", "demo failed")


def readme_run_command() -> str:
    """The first shell block of the README: the command a new user copies."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```sh\n(.+?)\n```", text, re.S)
    assert match, "README.md has no ```sh block"
    return match.group(1).strip()


def checkout_copy(dest: Path) -> Path:
    """The files a fresh clone of this working tree would have (tracked and untracked, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def pip_cache_dir() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.strip()


# A cold pip cache compiles llama.cpp (about 7 minutes on 2 cores) inside this test.
@pytest.mark.timeout(1800)
def test_readme_run_command_from_the_repository_root(tmp_path: Path) -> None:
    command = readme_run_command()
    assert "pip install '.[" in command and "-e" not in command.split(), "the README installs regularly"
    checkout = checkout_copy(tmp_path / "checkout")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOSTLER_", "VIRTUAL_ENV", "PYTHON"))}
    # A new user's pip cache is warm from the install they just ran; here it is the session's, so
    # llama.cpp is not compiled again. Everything else of theirs (models, config, caches) is empty.
    env.update(HOME=str(home), PIP_CACHE_DIR=pip_cache_dir(), XDG_CACHE_HOME=str(home / ".cache"))
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    demo_done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            # `up` says how to stop it once the demo reply has been streamed.
            if "Ctrl-C stops." in line:
                demo_done.set()
        demo_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        finished = demo_done.wait(timeout=1500)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        reader.join(10)
    output = "".join(lines)
    log = tmp_path / "newcomer.log"
    log.write_text(output)
    print(f"newcomer run: {time.monotonic() - started:.0f} s (output in {log})")
    assert finished, f"hostler up did not finish its demo in time:\n{output[-4000:]}"
    assert "Ctrl-C stops." in output, f"the demo did not complete:\n{output[-4000:]}"
    serving = output.split("Ctrl-C stops.")[0]
    for sign in CRASH_SIGNS:
        assert sign not in serving, f"{sign!r} in the output of the README command:\n{output[-4000:]}"
    # Stopping it with Ctrl-C is part of the first run too.
    assert "Traceback" not in output and "Error" not in output.split("Ctrl-C stops.")[1], output[-4000:]
    reply = output.split(">>> ", 1)[1].split("\n", 1)[1].split("Ctrl-C stops.")[0].strip()
    assert len(reply) >= 10, f"no streamed demo answer:\n{output[-4000:]}"
    # The install was a regular one: the package lives in the venv, not in the checkout.
    site = subprocess.run(
        [str(checkout / ".venv/bin/python"), "-c", "import hostler; print(hostler.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert "site-packages" in site and not site.startswith(str(checkout / "client")), site
    assert not (checkout / "hostler").exists(), "a folder named hostler at the root shadows the installed package"
