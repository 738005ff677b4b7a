"""Packaging promises: one `hostler` namespace, an honest __all__, a client without llama.cpp."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import hostler
import hostler.client
import hostler.schemas
from conftest import ROOT


def test_all_is_complete_and_importable() -> None:
    for module in (hostler, hostler.client, hostler.schemas):
        public = {n for n in dir(module) if not n.startswith("_") and n[0].isupper()}
        assert public <= set(module.__all__), f"{module.__name__} exports more than __all__ lists"
        for name in module.__all__:
            assert hasattr(module, name), name


def test_issue_surface_is_exported() -> None:
    from hostler import Client, HostlerError, JobFailed, ModelNotFound, Timeout

    assert issubclass(ModelNotFound, HostlerError) and issubclass(JobFailed, HostlerError)
    assert issubclass(Timeout, HostlerError) and callable(Client)


def test_client_never_imports_llama_cpp() -> None:
    code = (
        "import sys, hostler, hostler.worker.cli.main; from hostler import Client; "
        "assert 'llama_cpp' not in sys.modules, 'llama_cpp imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_wheel_has_only_the_hostler_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("hostler-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"hostler"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "hostler/client/_client.py" in names and "hostler/worker/serving/worker.py" in names
    assert "hostler/schemas/_jobs.py" in names
    # Every sub-package of the source folders is in the wheel (pyproject lists them one by one).
    for init in ROOT.glob("worker/*/__init__.py"):
        assert f"hostler/worker/{init.parent.name}/__init__.py" in names, init
