"""The package's shape, as docs/architecture.md draws it: which sub-package may import which; and the
tests' shape: a folder per part of the package, the e2e modules named as such."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

WORKER = ROOT / "worker"

# The arrows of docs/architecture.md ("worker/ reads as the architecture"). Every sub-package may
# also import hostler.schemas and hostler.client's shared modules. Top-level modules of worker/
# (embedded_redis, outage) appear as targets; they import no sub-package.
ALLOWED: dict[str, set[str]] = {
    "engines": {"hardware", "memory"},
    "serving": {"engines", "models", "outage"},
    "control": {"serving", "engines", "models", "memory", "hardware", "outage"},
    "models": {"memory"},
    "memory": {"hardware"},
    "hardware": set(),
    "gateway": {"serving"},
    "cli": {"control", "engines", "gateway", "hardware", "models", "serving", "embedded_redis"},
}
# Modules at the top of worker/ that every sub-package may lean on, so they lean on none.
TOP_LEVEL = {"embedded_redis", "outage"}


def worker_imports(path: Path) -> set[str]:
    """The worker sub-packages (or top modules) a file imports, relative imports resolved."""
    package = path.parent.relative_to(WORKER).parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)]) if node.level > 1 else list(package)
                module = ".".join(["hostler", "worker", *base, *(node.module.split(".") if node.module else [])])
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["hostler", "worker"] and len(parts) > 2:
                found.add(parts[2])
    return found


def test_every_sub_package_is_drawn() -> None:
    packages = {p.parent.name for p in WORKER.glob("*/__init__.py")}
    assert packages == set(ALLOWED), "docs/architecture.md and ALLOWED must name every worker sub-package"


def test_sub_packages_import_only_along_the_drawn_arrows() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((WORKER / package).rglob("*.py")):
            for target in worker_imports(path) - allowed - {package}:
                wrong.append(f"{path.relative_to(ROOT)} imports hostler.worker.{target}")
    assert not wrong, "\n".join(wrong)


def test_top_level_modules_import_no_sub_package() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports hostler.worker.{target}"
        for path in sorted(WORKER.glob("*.py"))
        if path.name not in ("__init__.py", "__main__.py") and path.stem in TOP_LEVEL
        for target in worker_imports(path)
    ]
    assert not wrong, "\n".join(wrong)


def test_schemas_import_pydantic_only() -> None:
    for path in (ROOT / "schemas").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                assert not node.module.startswith("hostler."), f"{path.name} imports {node.module}"


# -- the tests' own shape ---------------------------------------------------------------

TESTS = ROOT / "tests"
# Folders of tests/ besides the package's own (client, schemas, worker/<sub-package>): the journeys
# through the whole system, and the project's promises (layout, packaging, compose.yaml).
TEST_FOLDERS_OF_THEIR_OWN = {"e2e", "project"}


def _marks_e2e(path: Path) -> bool:
    """True when the module sets `pytestmark` to pytest.mark.e2e (alone or in a list)."""
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            values = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            return any(ast.unparse(value) == "pytest.mark.e2e" for value in values)
    return False


def test_test_folders_mirror_the_package() -> None:
    folders = {p.relative_to(TESTS).as_posix() for p in TESTS.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    package = {"client", "schemas", "worker"} | {f"worker/{name}" for name in ALLOWED}
    assert folders <= package | TEST_FOLDERS_OF_THEIR_OWN, sorted(folders - package - TEST_FOLDERS_OF_THEIR_OWN)


def test_a_test_module_is_e2e_exactly_when_its_place_says_so() -> None:
    """In a folder of tests/, a module marks itself e2e (module-level pytestmark) exactly when it
    lives in tests/e2e/ or its name ends in _e2e: `scripts/test.sh --fast` leaves those out."""
    wrong = []
    for path in sorted(TESTS.glob("*/**/test_*.py")):
        expected = path.relative_to(TESTS).parts[0] == "e2e" or path.stem.endswith("_e2e")
        if _marks_e2e(path) != expected:
            rule = "needs" if expected else "must not set"
            wrong.append(f"{path.relative_to(ROOT)}: {rule} pytestmark = pytest.mark.e2e")
    assert not wrong, "\n".join(wrong)
