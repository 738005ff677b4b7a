"""Embeddings end to end: the official openai SDK and hostler's clients against `hostler gateway`,
`hostler up` and a real worker, compared with llama-cpp-python in-process.

SmolLM2-135M-Instruct for the vectors and for an embedding job served while generations run;
the tiny GGUF for errors and `hostler batch` lines.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import redis
from batch_lines import chat_line, run_batch
from conftest import SMOL_MODEL, Stack
from gateway_proc import Gateways
from hostler import AsyncClient, ContextExceeded, InvalidRequest
from hostler.client import JobFailed
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

MODEL = SMOL_MODEL
TEXTS = [
    "The cat sat on the mat.",
    "A quarterly report on the sales of umbrellas in a rainy year.",
    "Paris is the capital of France.",
    "def add(a, b):\n    return a + b",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "hi",
]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def from_base64(data: str) -> list[float]:
    return np.frombuffer(base64.b64decode(data), dtype="<f4").astype(np.float64).tolist()


@pytest.fixture(scope="module")
def reference(smollm2: Path) -> tuple[list[list[float]], int]:
    """llama-cpp-python in-process: Llama(embedding=True), mean pooling (SmolLM2 declares none), normalised."""
    import llama_cpp
    from hostler.worker.engines.llama_cpu import safe_llama_defaults

    with safe_llama_defaults():
        llm = llama_cpp.Llama(
            model_path=str(smollm2),
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            n_ctx=2048,
            verbose=False,
        )
    try:
        vectors = [llm.embed(text, normalize=True) for text in TEXTS]
        tokens = llm.create_embedding(TEXTS)["usage"]["prompt_tokens"]
    finally:
        llm.close()
    return vectors, tokens


def assert_equal_to_reference(vectors: Sequence[Sequence[float]], reference: list[list[float]]) -> None:
    assert len(vectors) == len(reference)
    for index, (vector, expected) in enumerate(zip(vectors, reference, strict=True)):
        assert len(vector) == len(expected) == 576
        assert cosine(vector, expected) >= 0.9999, index
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_sdk_and_clients_return_llama_cpp_pythons_vectors(
    smol_stack: Stack, tmp_path: Path, gateways: Gateways, reference: tuple[list[list[float]], int]
) -> None:
    vectors, prompt_tokens = reference
    gateway = gateways.start(smol_stack.url)
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)

    floats = sdk.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert floats.object == "list" and floats.model == MODEL
    assert [item.index for item in floats.data] == list(range(len(TEXTS)))
    assert_equal_to_reference([item.embedding for item in floats.data], vectors)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == prompt_tokens

    # The SDK asks for base64 unless told otherwise, and decodes it: the same float32 values.
    default = sdk.embeddings.create(model=MODEL, input=TEXTS)
    assert [item.embedding for item in default.data] == [item.embedding for item in floats.data]
    raw = httpx.post(
        f"{gateway.base_url}/embeddings",
        json={"model": MODEL, "input": TEXTS[:2], "encoding_format": "base64"},
        timeout=60,
    ).json()
    assert [from_base64(item["embedding"]) for item in raw["data"]] == [item.embedding for item in floats.data[:2]]

    one = sdk.embeddings.create(model=MODEL, input=TEXTS[2], encoding_format="float")
    assert len(one.data) == 1 and cosine(one.data[0].embedding, vectors[2]) >= 0.9999

    short = sdk.embeddings.create(model=MODEL, input=TEXTS, dimensions=64, encoding_format="float")
    for item, full in zip(short.data, floats.data, strict=True):
        head = np.asarray(full.embedding[:64])
        assert np.allclose(item.embedding, head / np.linalg.norm(head), atol=1e-6)

    async def through_async_sdk() -> tuple[Any, Any]:
        client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
        try:
            return await asyncio.gather(
                client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float"),
                client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="base64"),
            )
        finally:
            await client.close()

    async_floats, async_base64 = asyncio.run(through_async_sdk())
    assert_equal_to_reference([item.embedding for item in async_floats.data], vectors)
    assert_equal_to_reference([from_base64(item.embedding) for item in async_base64.data], vectors)

    # hostler's own clients: the same vectors, the same usage; token ids embed as their text.
    result = smol_stack.client.embed(MODEL, TEXTS)
    assert result.pooling == "mean" and result.dimensions == 576
    assert result.usage.prompt_tokens == prompt_tokens and result.usage.completion_tokens == 0
    assert_equal_to_reference(result.vectors, vectors)
    tokens = sdk.embeddings.create(model=MODEL, input=[[1, 504, 2644, 3204]], encoding_format="float")
    assert tokens.usage.prompt_tokens == 4

    async def through_async_client() -> Any:
        async with AsyncClient(smol_stack.url, timeout=60) as client:
            return await client.embed(MODEL, TEXTS, dimensions=64)

    assert asyncio.run(through_async_client()).vectors == [item.embedding for item in short.data]


def test_an_embedding_job_is_served_between_the_steps_of_four_generations(
    smol_stack: Stack, reference: tuple[list[list[float]], int]
) -> None:
    client = smol_stack.client
    client.embed(MODEL, ["warm up"])  # the model is loaded and the embedding path has run once

    async def scenario() -> tuple[float, list[str], Any]:
        async with AsyncClient(smol_stack.url, timeout=300) as async_client:
            streams = [
                # Counting goes on to max_tokens: each generation is still running when the embedding ends.
                await async_client.stream(MODEL, f"{i}, {i + 1}, {i + 2}, {i + 3},", max_tokens=400, temperature=0)
                for i in range(4)
            ]
            try:
                for stream in streams:
                    await stream.__anext__()  # every generation is running
                started = time.monotonic()
                result = await async_client.embed(MODEL, TEXTS)
                took = time.monotonic() - started
                statuses = [await (await async_client.job(stream.job_id)).status() for stream in streams]
            finally:
                for stream in streams:
                    await stream.aclose()  # nobody listens: the worker stops them within about 2 s
            return took, statuses, result

    took, during, result = asyncio.run(scenario())
    print(f"\nembedding 6 texts while 4 generations run: {took * 1000:.0f} ms")
    assert during == ["started"] * 4, "the embedding job waited for the generations to end"
    assert_equal_to_reference(result.vectors, reference[0])


# -- errors and batch lines, on the tiny model ---------------------------------------------------


def rq_jobs(connection: redis.Redis) -> list[str]:
    return sorted(k.decode() for k in connection.scan_iter("rq:job:*"))


def test_bad_inputs_are_400s_naming_the_problem_and_nothing_is_queued(
    stack: Stack, tmp_path: Path, gateways: Gateways, connection: redis.Redis
) -> None:
    gateway = gateways.start(stack.url)
    url = f"{gateway.base_url}/embeddings"
    before = rq_jobs(connection)
    bad: list[tuple[Any, str, str]] = [
        ({"model": "tiny", "input": []}, "input", "empty list"),
        ({"model": "tiny", "input": ""}, "input", "empty string"),
        ({"model": "tiny", "input": ["ok", ""]}, "input", "input[1] is an empty string"),
        ({"model": "tiny", "input": {"text": "x"}}, "input", "got dict"),
        ({"model": "tiny", "input": ["ok", 3]}, "input", "input[1] is int"),
        ({"model": "tiny", "input": [[1, -2]]}, "input", "input[0][1] is -2"),
        ({"model": "tiny", "input": [[]]}, "input", "empty list of token ids"),
        ({"model": "tiny"}, "input", "missing"),
        ({"model": "tiny", "input": "x", "encoding_format": "int8"}, "encoding_format", "float"),
        ({"model": "tiny", "input": "x", "dimensions": 0}, "dimensions", "greater than"),
        ({"model": "tiny", "input": "x", "dimensions": "8"}, "dimensions", "integer"),
        ({"model": "tiny", "input": "x", "truncate": True}, "truncate", "unknown"),
    ]
    for body, param, words in bad:
        response = httpx.post(url, json=body, timeout=30)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["param"] == param and words in error["message"], (body, error)
    assert rq_jobs(connection) == before, "a refused request queued a job"
    missing = httpx.post(url, json={"model": "no-such-model", "input": "x"}, timeout=30)
    assert missing.status_code == 404 and "tiny" in missing.json()["error"]["message"]

    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    long = " ".join(["the king said that the queen was in the city"] * 300)
    with pytest.raises(openai.BadRequestError) as over:
        sdk.embeddings.create(model="tiny", input=["short", long])
    error = over.value.body
    assert isinstance(error, dict) and error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert "input 1 is" in error["message"] and "context is 2048 tokens" in error["message"]
    with pytest.raises(openai.BadRequestError, match="dimensions 65 is larger than model 'tiny'.s embedding size 64"):
        sdk.embeddings.create(model="tiny", input="x", dimensions=65)
    # The worker went on serving.
    assert len(sdk.embeddings.create(model="tiny", input=["a", "b"]).data) == 2
    # Embedding jobs show in /metrics as a kind of their own (the two failed ones and this one).
    metrics = text_string_to_metric_families(httpx.get(f"{gateway.url}/metrics", timeout=30).text)
    durations = next(family for family in metrics if family.name == "hostler_job_duration_seconds")
    counts = [s.value for s in durations.samples if s.name.endswith("_count") and s.labels["kind"] == "embedding"]
    assert counts == [3]

    client = stack.client
    with pytest.raises(InvalidRequest, match="empty list"):
        client.embed("tiny", [])
    with pytest.raises(InvalidRequest, match=r"input\[0\] is an empty string"):
        client.embed("tiny", [""])
    with pytest.raises(InvalidRequest, match="unknown parameter"):
        client.embed("tiny", ["a"], temperature=0)  # type: ignore[call-arg]
    with pytest.raises(ContextExceeded, match=r"input 1 is \d+ tokens but model 'tiny'.s context is 2048 tokens"):
        client.embed("tiny", ["short", long])
    with pytest.raises(JobFailed) as failed:
        client.embed("tiny", ["x"], dimensions=65)
    assert failed.value.code == "invalid_request"


def test_batch_file_with_embeddings_lines(stack: Stack, tmp_path: Path) -> None:
    def line(custom_id: str, body: dict[str, Any]) -> str:
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body})

    lines = [
        line("e-1", {"model": "tiny", "input": "Once upon a time"}),
        line("e-2", {"model": "tiny", "input": ["hello world", "the cat sat"], "dimensions": 16}),
        line("e-3", {"model": "tiny", "input": ["water is the"], "encoding_format": "base64"}),
        line("bad", {"model": "tiny", "input": []}),
        chat_line("chat-1", "hi", max_tokens=4),
    ]
    run, records = run_batch(stack.url, lines, tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "line 4" in run.stderr and "empty list" in run.stderr
    assert set(records) == {"e-1", "e-2", "e-3", "chat-1"}
    for custom_id in ("e-1", "e-2", "e-3"):
        assert records[custom_id]["error"] is None and records[custom_id]["response"]["status_code"] == 200

    client = stack.client
    body = records["e-1"]["response"]["body"]
    assert body["object"] == "list" and len(body["data"]) == 1
    assert body["usage"]["prompt_tokens"] == client.embed("tiny", "Once upon a time").usage.prompt_tokens
    assert body["data"][0]["embedding"] == client.embed("tiny", "Once upon a time").vectors[0]
    pair = records["e-2"]["response"]["body"]["data"]
    assert [len(item["embedding"]) for item in pair] == [16, 16]
    assert [item["embedding"] for item in pair] == client.embed(
        "tiny", ["hello world", "the cat sat"], dimensions=16
    ).vectors
    encoded = records["e-3"]["response"]["body"]["data"][0]["embedding"]
    assert from_base64(encoded) == client.embed("tiny", "water is the").vectors[0]
    assert records["chat-1"]["response"]["body"]["object"] == "chat.completion"
