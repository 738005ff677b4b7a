"""A property-based fuzzer (schemathesis), driven by the gateway's own OpenAPI document, against a
real gateway in front of a real `hostler up` on the tiny generated GGUFs: no answer is a 5xx, and
every answer's status, content type and body are the ones the document declares."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from conftest import Stack, models_folder, running_stack
from gateway_proc import Gateway, Gateways

pytestmark = pytest.mark.e2e

# Bounded so the run stays under about two minutes on two cores.
EXAMPLES_PER_OPERATION = 12
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture
def healthy_stack(redis_url: str, model_files: dict[str, Path], tmp_path: Path) -> Iterator[Stack]:
    """`hostler up` with the tiny models that load. The fuzzer learns model ids from the answers
    it gets, and the deliberately broken files of the `stack` fixture answer 503 `load_failed`, as
    documented; but no 5xx may come from a deployment whose parts are sound."""
    models = models_folder(tmp_path, {name: model_files[name] for name in ("tiny", "tiny-base", "tiny-ctx")})
    with running_stack(redis_url, models, tmp_path / "up.log") as running:
        yield running


@pytest.fixture
def gateway(healthy_stack: Stack, gateways: Gateways) -> Gateway:
    return gateways.start(healthy_stack.url, "--timeout", "20")


def test_the_fuzzer_finds_no_server_error_and_no_answer_outside_the_document(gateway: Gateway, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{gateway.url}/openapi.json",
        "--checks", CHECKS,
        "--max-examples", str(EXAMPLES_PER_OPERATION),
        "--phases", "examples,coverage,fuzzing",
        "--workers", "1",
        "--seed", "17",
        "--request-timeout", "30",
        "--suppress-health-check", "all",
        "--max-failures", "20",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    report = run.stdout[-12_000:] + run.stderr[-4_000:]
    assert run.returncode == 0, report
    assert "Traceback" not in gateway.output(), gateway.output()[-6_000:]


def test_seed_minus_one_is_a_random_seed_through_the_sdk(gateway: Gateway) -> None:
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    reply = sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                        seed=-1)  # fmt: skip
    assert reply.choices[0].message.content is not None and reply.usage is not None
    text = sdk.completions.create(model="tiny", prompt="hi", max_tokens=4, seed=-1)
    assert text.usage is not None and text.usage.completion_tokens >= 1
