"""The HTTP gateway as a real process in front of real Redis, host agents, janitors and workers.

These run on the tiny generated GGUFs (or with no worker at all, where a request must wait);
test_gateway_e2e.py runs SmolLM2 through the official openai SDK, test_gateway.py what needs
no process of hostler's.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from cluster import Cluster
from conftest import Stack
from gateway_proc import Gateways
from hostler.client._rqstore import read_outcome

pytestmark = pytest.mark.e2e

CLUSTER_CLIENT_TIMEOUT = 60.0
MiB = 1024 * 1024
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
CHAT_AS_TEXT = {"model": "tiny", "prompt": "hello", "max_tokens": 4}


def waiting_host(cluster: Cluster, models_dir: Path, *janitor_args: str) -> None:
    """A host agent with the models and a janitor, but no controller: jobs wait in their queues."""
    cluster.host("gwhost", models_dir, 64 * 1024 * MiB)
    cluster._start("janitor", "janitor", *janitor_args)


def is_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def rq_jobs(connection: redis.Redis) -> list[str]:
    return sorted(k.decode().removeprefix("rq:job:") for k in connection.scan_iter("rq:job:*"))


def test_bad_requests_are_answered_in_openai_shape_and_never_reach_a_queue(
    cluster: Cluster, models_dir: Path, tmp_path: Path, gateways: Gateways, connection: redis.Redis
) -> None:
    waiting_host(cluster, models_dir)
    gateway = gateways.start(cluster.url)
    chat_url = f"{gateway.base_url}/chat/completions"
    bad: list[tuple[Any, str | None, str]] = [
        ({**CHAT, "temperature": "hot"}, "temperature", "invalid_value"),
        ({**CHAT, "temperature": 9}, "temperature", "invalid_value"),
        ({**CHAT, "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({**CHAT, "max_tokens": "5"}, "max_tokens", "invalid_value"),
        ({**CHAT, "n": 2}, "n", "invalid_value"),
        ({**CHAT, "bogus": 1}, "bogus", "unknown_parameter"),
        ({**CHAT, "stop": [""]}, "stop", "invalid_value"),
        ({**CHAT, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "invalid_value"),
        ({**CHAT, "tools": [{"type": "function"}]}, "tools.0.function", "missing_parameter"),
        ({**CHAT, "messages": []}, "messages", "invalid_value"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "invalid_value"),
        ({"messages": CHAT["messages"]}, "model", "missing_parameter"),
        ([1, 2], None, "invalid_value"),
    ]
    for body, param, code in bad:
        error = is_openai_error(httpx.post(chat_url, json=body), 400, code)
        assert error["param"] == param, (body, error)
    assert "n=1" in is_openai_error(httpx.post(chat_url, json={**CHAT, "n": 3}), 400)["message"]
    is_openai_error(httpx.post(chat_url, content=b"{not json"), 400, "invalid_json")
    completions = f"{gateway.base_url}/completions"
    is_openai_error(httpx.post(completions, json={"model": "tiny", "prompt": ["a", "b"]}), 400)
    is_openai_error(httpx.post(f"{gateway.base_url}/tokenize", json={"model": "tiny"}), 400, "missing_parameter")

    # Over the body limit: refused from Content-Length before the body is read, or while a
    # chunked body (no Content-Length) is read.
    huge = b'{"model": "tiny", "prompt": "' + b"x" * (10 * MiB) + b'"}'
    is_openai_error(httpx.post(completions, content=huge), 413, "request_too_large")
    chunks = (huge[i : i + MiB] for i in range(0, len(huge), MiB))
    is_openai_error(httpx.post(completions, content=chunks), 413, "request_too_large")

    missing = is_openai_error(httpx.post(chat_url, json={**CHAT, "model": "nope"}), 404, "model_not_found")
    assert "'nope'" in missing["message"] and "tiny" in missing["message"] and missing["param"] == "model"
    is_openai_error(httpx.get(f"{gateway.base_url}/models/nope"), 404, "model_not_found")
    is_openai_error(httpx.get(f"{gateway.base_url}/nothing-here"), 404)

    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="n=2"):
        sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], n=2)
    with pytest.raises(openai.NotFoundError, match="tiny"):
        sdk.completions.create(model="nope", prompt="x")
    assert rq_jobs(connection) == []
    assert "Traceback" not in gateway.output()


def test_a_request_waiting_past_the_timeout_is_504_and_its_job_leaves_the_queue(
    cluster: Cluster, models_dir: Path, tmp_path: Path, gateways: Gateways, connection: redis.Redis
) -> None:
    waiting_host(cluster, models_dir)
    gateway = gateways.start(cluster.url, "--timeout", "2")
    for stream in (False, True):
        started = time.monotonic()
        response = httpx.post(f"{gateway.base_url}/chat/completions", json={**CHAT, "stream": stream}, timeout=30)
        took = time.monotonic() - started
        assert is_openai_error(response, 504)["type"] == "timeout_error"
        assert 2 <= took < 8, took
    (first, second) = sorted(rq_jobs(connection), key=lambda j: connection.hget(f"rq:job:{j}", "enqueued_at") or b"")
    # The janitor takes them off the queue within its next round (0.5 s).
    cluster.wait_for(lambda: cluster.client.queue_length("tiny") == 0, "the queue to empty", timeout=5)
    for job_id in (first, second):
        outcome = cluster.wait_for(lambda job_id=job_id: read_outcome(connection, job_id), f"job {job_id} to end")
        assert outcome.status == "canceled" and outcome.code in {"client_gone", "expired"}, outcome


def test_a_client_that_leaves_while_its_request_waits_frees_the_job(
    cluster: Cluster, models_dir: Path, tmp_path: Path, gateways: Gateways, connection: redis.Redis
) -> None:
    waiting_host(cluster, models_dir)
    gateway = gateways.start(cluster.url, "--timeout", "120")
    for stream in (False, True):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{gateway.base_url}/chat/completions", json={**CHAT, "stream": stream}, timeout=1.5)
    left_at = time.monotonic()
    cluster.wait_for(lambda: len(rq_jobs(connection)) == 2 and cluster.client.queue_length("tiny") == 0, "both gone")
    # The gateway noticed the disconnect and let go at once, not at its 120 s timeout.
    assert time.monotonic() - left_at < 5
    for job_id in rq_jobs(connection):
        outcome = read_outcome(connection, job_id)
        assert outcome is not None and (outcome.status, outcome.code) == ("canceled", "client_gone"), outcome


def test_a_full_queue_is_429_and_no_capacity_is_503_both_with_retry_after(
    cluster: Cluster, models_dir: Path, tmp_path: Path, gateways: Gateways, connection: redis.Redis
) -> None:
    waiting_host(cluster, models_dir, "--max-queue", "1")
    cluster.wait_for(lambda: connection.hget(cluster.keys.max_queue, "*"), "the janitor's queue bound")
    gateway = gateways.start(cluster.url, "--timeout", "20")
    waiting: dict[str, httpx.Response] = {}
    first = threading.Thread(
        target=lambda: waiting.update(
            first=httpx.post(f"{gateway.base_url}/completions", json=CHAT_AS_TEXT, timeout=60)
        )
    )
    first.start()
    cluster.wait_for(lambda: cluster.client.queue_length("tiny") == 1, "the first job to wait")
    response = httpx.post(f"{gateway.base_url}/completions", json=CHAT_AS_TEXT)
    assert is_openai_error(response, 429, "queue_full")["type"] == "rate_limit_error"
    assert int(response.headers["Retry-After"]) >= 1
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError, match="full"):
        sdk.completions.create(model="tiny", prompt="x", max_tokens=2)

    # A controller now places `tiny` on a host too small for it: the waiting job fails.
    cluster.kill("gwhost")
    connection.delete(cluster.keys.host("gwhost"))
    cluster.host("small", models_dir, 1 * MiB)
    cluster.controller()
    first.join(60)
    answer = waiting["first"]
    error = is_openai_error(answer, 503, "no_capacity")
    assert "needs" in error["message"] and int(answer.headers["Retry-After"]) >= 1


def test_api_keys_guard_every_endpoint_but_health_and_are_never_logged(
    cluster: Cluster, models_dir: Path, tmp_path: Path, gateways: Gateways
) -> None:
    waiting_host(cluster, models_dir)
    secret, other, flag = "sk-hostler-test-5ecret", "sk-second-key", "sk-from-the-flag"
    gateway = gateways.start(cluster.url, "--api-key", flag, env={"HOSTLER_API_KEYS": f"{secret}, {other}"})
    assert httpx.get(f"{gateway.url}/health").status_code == 200
    for path in ("/v1/models", "/metrics", "/management/processes"):
        is_openai_error(httpx.get(gateway.url + path), 401, "invalid_api_key")
        is_openai_error(httpx.get(gateway.url + path, headers={"Authorization": "Bearer wrong"}), 401)
        is_openai_error(httpx.get(gateway.url + path, headers={"Authorization": f"Basic {secret}"}), 401)
        for key in (secret, other, flag):
            assert httpx.get(gateway.url + path, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    is_openai_error(httpx.post(f"{gateway.base_url}/chat/completions", json=CHAT), 401)
    assert "tiny" in [m.id for m in openai.OpenAI(base_url=gateway.base_url, api_key=secret).models.list()]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.base_url, api_key="nope", max_retries=0).models.list()
    gateway.stop()
    log = gateway.output()
    assert secret not in log and other not in log and flag not in log and "Authorization" not in log


def test_models_load_unload_tokenize_and_processes(
    stack: Stack, tmp_path: Path, gateways: Gateways, connection: redis.Redis
) -> None:
    gateway = gateways.start(stack.url)
    api = httpx.Client(base_url=gateway.url, timeout=60)
    listing = api.get("/v1/models").json()
    assert listing["object"] == "list"
    tiny = next(m for m in listing["data"] if m["id"] == "tiny")
    assert tiny["object"] == "model" and tiny["engine"] == "llama" and tiny["hosts"] == ["testhost"]
    assert tiny["size_bytes"] > 0 and tiny["estimate_bytes"] > 0 and tiny["loaded_on"] == []

    loaded = api.post("/v1/models/tiny/load", json={"n_ctx": 512, "keep_alive": "10m"})
    assert loaded.status_code == 200, loaded.text
    # The worker preloads with the load's params, so the load job itself finds them loaded.
    assert loaded.json()["object"] == "model.load" and loaded.json()["params"]["n_ctx"] == 512
    assert api.get("/v1/models/tiny").json()["loaded_on"] == ["testhost"]
    is_openai_error(api.post("/v1/models/tiny/load", json={"n_ctx": 1}), 400)
    assert "n_ctx" in api.post("/v1/models/tiny/load", json={"n_ctx": 1}).json()["error"]["message"]
    assert "flash" in api.post("/v1/models/tiny/load", json={"flash": True}).json()["error"]["message"]
    is_openai_error(api.post("/v1/models/nope/load"), 404, "model_not_found")

    counted = api.post("/v1/tokenize", json={"model": "tiny", "content": "hello world"}).json()
    assert counted == {"object": "tokenize", "model": "tiny", "count": stack.client.count_tokens("tiny", "hello world")}
    processes = api.get("/management/processes").json()
    (worker,) = [w for w in processes["data"] if w["model"] == "tiny"]
    assert worker["pid"] in stack.worker_pids("tiny") and worker["host"] == "testhost"
    assert worker["rss_bytes"] > 0 and worker["loaded"] is True and worker["queued_jobs"] == []
    assert processes["queues"]["tiny"] == 0

    # No chat template: a 400 that says how to add one.
    failed = api.post("/v1/chat/completions", json={**CHAT, "model": "tiny-base"})
    assert is_openai_error(failed, 400, "no_chat_template")
    text = api.post("/v1/completions", json={**CHAT_AS_TEXT, "model": "tiny-base"}).json()
    assert text["object"] == "text_completion" and text["usage"]["completion_tokens"] >= 1

    unloaded = api.post("/v1/models/tiny/unload")
    assert unloaded.status_code == 200 and unloaded.json()["was_loaded"] is True
    stack_client = stack.client
    deadline = time.monotonic() + 30
    while stack.worker_pids("tiny") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert api.get("/v1/models/tiny").json()["loaded_on"] == []
    assert stack_client.queue_length("tiny") == 0
