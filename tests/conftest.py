"""Fixtures that start real parts: a Redis-compatible server, real GGUF files, real processes.

tests/ mirrors the package (tests/client, tests/worker/<sub-package>); tests/e2e holds the journeys
through the whole system, tests/project the project's own promises. A module whose tests start
hostler processes (`hostler up`, host agents, controllers, workers, gateways) or load a real model
is marked e2e with a module-level `pytestmark` and lives in tests/e2e/ or is named `*_e2e.py`
(tests/project/test_layout.py checks the names, the hook at the bottom the fixtures);
`scripts/test.sh --fast` runs the others.

Every shared fixture is here, and this is the only conftest.py: a second one would take over the
module name `conftest` that `from conftest import ...` reads. pyproject puts tests/ and scripts/ on
sys.path (`pythonpath`), so the helpers (`cluster`, `fake_engine`, `gateway_proc`, `local_hub`,
`redis_proc`, `raw_jobs`, `batch_lines`; scripts' `up_stack`, `make_tiny_gguf`, `gguf_to_mlx`, `soak`) import as
top-level modules from any folder. Test modules need names unique across folders.
"""

from __future__ import annotations

import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import redis_proc
from cluster import Cluster
from fake_engine import FakeEngine
from gateway_proc import Gateways
from hostler import Client
from hostler.schemas import Keys
from hostler.worker.control.host_agent import HostAgent
from hostler.worker.embedded_redis import EmbeddedRedis
from hostler.worker.models.fetch import GEMMA3, SMOLLM2, fetch
from hostler.worker.models.registry import scan
from hostler.worker.serving.worker import ModelWorker
from local_hub import LocalHub, serve_hub
from make_tiny_gguf import write_tiny_gguf
from make_tiny_mlx import write_tiny_mlx
from raw_jobs import ring_bell
from up_stack import Stack, start_stack, stop_stack

__all__ = ["GGUF_REPO", "ROOT", "Stack", "start_stack", "stop_stack"]

ROOT = Path(__file__).resolve().parent.parent
# The repo the `hub` fixture serves.
GGUF_REPO = "tester/Tiny-GGUF"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    # One server for the session, an empty database for every test.
    connection = redis.Redis.from_url(redis_server.url)
    connection.flushall()
    connection.close()
    return redis_server.url


@pytest.fixture
def connection(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny generated GGUFs (fast) and a file that only pretends to be one."""
    base = tmp_path_factory.mktemp("model-files")
    files = {
        "tiny": write_tiny_gguf(base / "tiny.gguf"),
        "tiny-base": write_tiny_gguf(base / "tiny-base.gguf", chat_template=None, seed=1),
        "tiny-ctx": write_tiny_gguf(base / "tiny-ctx.gguf", seed=2, n_ctx_train=64),
    }
    broken = base / "broken.gguf"
    broken.write_bytes(b"this is not a gguf file at all\n" * 100)
    files["broken"] = broken
    truncated = base / "truncated.gguf"
    truncated.write_bytes(files["tiny"].read_bytes()[:5000])
    files["truncated"] = truncated
    return files


@pytest.fixture(scope="session")
def tiny_mlx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated MLX model folder (random llama weights, BPE tokenizer, chat template)."""
    return write_tiny_mlx(tmp_path_factory.mktemp("mlx-model") / "tiny-mlx")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return fetch(SMOLLM2, quiet=True)


@pytest.fixture(scope="session")
def gemma3() -> Path:
    return fetch(GEMMA3, quiet=True)


@pytest.fixture(scope="session")
def smollm2_mlx(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as an MLX folder, its GGUF's quantized weights kept bit for bit
    (scripts/gguf_to_mlx.py): a real model for mlx-lm, where none can be fetched."""
    pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")
    from gguf_to_mlx import gguf_to_mlx

    return gguf_to_mlx(smollm2, tmp_path_factory.mktemp("mlx-real") / "smollm2-135m-mlx")


@pytest.fixture
def models_dir(tmp_path: Path, model_files: dict[str, Path]) -> Path:
    return models_folder(tmp_path, model_files)


@pytest.fixture
def user_gguf(tmp_path: Path, model_files: dict[str, Path]) -> Path:
    """A GGUF of the user's, outside the models directory."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    path = folder / "Tiny-Chat.Q4_K_M.gguf"
    shutil.copyfile(model_files["tiny"], path)
    return path


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, model_files: dict[str, Path]) -> Iterator[LocalHub]:
    """A local server with the hub's URL layout at HF_ENDPOINT, holding GGUF_REPO's three quants."""
    with serve_hub() as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        running.add(
            GGUF_REPO,
            {
                "README.md": b"# tiny\n",
                "tiny-chat-Q4_K_M.gguf": model_files["tiny"],
                "tiny-chat-Q8_0.gguf": model_files["tiny-base"],
                "tiny-chat-q4_k_s.gguf": model_files["tiny-ctx"],
            },
        )
        yield running


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, redis_proc.Refusal]]:
    """A server with a password and an ACL user that may only PING, and three ways to be refused
    (REFUSAL_CASES)."""
    password = secrets.token_hex(12)
    with redis_proc.redis_server(tmp_path_factory.mktemp("refusing"), "--requirepass", password) as port:
        admin = redis.Redis(port=port, password=password)
        limited_password = secrets.token_hex(12)
        admin.acl_setuser("limited", enabled=True, passwords=[f"+{limited_password}"], keys=["*"], channels=["*"],
                          commands=["+ping"])  # fmt: skip
        admin.close()
        wrong, ghost = secrets.token_hex(12), secrets.token_hex(12)
        base = f"127.0.0.1:{port}/0"
        yield {
            "wrong password": redis_proc.Refusal(f"redis://:{wrong}@{base}", wrong, "authentication failed"),
            "unknown user": redis_proc.Refusal(f"redis://ghost:{ghost}@{base}", ghost, "authentication failed"),
            "no permission": redis_proc.Refusal(
                f"redis://limited:{limited_password}@{base}", limited_password, "ACL refused"
            ),
        }


@contextmanager
def running_stack(redis_url: str, models: Path, log: Path) -> Iterator[Stack]:
    """`hostler up` over `models` for the length of a with block."""
    running = start_stack(redis_url, models, log)
    try:
        yield running
    finally:
        stop_stack(running)


def models_folder(tmp_path: Path, files: dict[str, Path]) -> Path:
    """A models directory holding `files` as `<id>.gguf` links."""
    folder = tmp_path / "models"
    folder.mkdir()
    for model, path in files.items():
        (folder / f"{model}.gguf").symlink_to(path)
    return folder


@pytest.fixture
def stack(redis_url: str, models_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(redis_url, models_dir, tmp_path / "up.log") as running:
        yield running


SMOL_MODEL = "smollm2-135m"


@pytest.fixture
def smol_stack(redis_url: str, tmp_path: Path, smollm2: Path) -> Iterator[Stack]:
    """`hostler up` serving SmolLM2-135M-Instruct as SMOL_MODEL."""
    with running_stack(redis_url, models_folder(tmp_path, {SMOL_MODEL: smollm2}), tmp_path / "up.log") as running:
        yield running


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Gateways]:
    """`hostler gateway` processes a test starts with `gateways.start(url, *args)`; all stopped after it."""
    started = Gateways(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def served(redis_url: str, models_dir: Path) -> Iterator[tuple[Client, ModelWorker]]:
    """A fake-engine worker for model `tiny` in a thread, and a host report naming the models."""
    keys = Keys()
    conn = redis.Redis.from_url(redis_url)
    agent = HostAgent(connection=conn, keys=keys, redis_url=redis_url, models_dir=models_dir, host="unit")
    agent.rescan()
    agent.report()
    manifest = scan(models_dir).models["tiny"]
    worker = ModelWorker(connection=conn, keys=keys, manifest=manifest, engine_factory=FakeEngine, host="unit")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    client = Client(redis_url, timeout=20)
    yield client, worker
    worker.stop()
    ring_bell(conn, "tiny")  # it stops now, not at the end of its 1 s wait for a job
    thread.join(10)
    client.close()
    conn.close()


@pytest.fixture
def cluster(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Host agents, controllers and janitors as real processes (tests/cluster.py), all stopped after
    the test. Its client waits up to the module's CLUSTER_CLIENT_TIMEOUT seconds (120 unless set)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    timeout = getattr(request.module, "CLUSTER_CLIENT_TIMEOUT", 120.0)
    running = Cluster(redis_url, logs, Client(redis_url, timeout=timeout))
    try:
        yield running
    finally:
        running.close()


# Fixtures that start hostler processes or load a real model: a test using one is e2e.
PROCESS_FIXTURES = frozenset({"stack", "cluster", "smollm2", "gemma3"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("e2e") is None
    ]
    if unmarked:
        names = "\n  ".join(unmarked)
        raise pytest.UsageError(
            f"these tests start hostler processes or a real model but are not marked e2e:\n  {names}"
        )
