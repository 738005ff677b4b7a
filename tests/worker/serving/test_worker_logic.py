"""Worker logic on a real Redis with a fake engine: FIFO, validation, bad payloads, no pickle."""

from __future__ import annotations

import json
import pickle
import threading
import zlib
from pathlib import Path

import pytest
import redis
from fake_engine import FakeEngine
from hostler import Client, InvalidRequest, JobFailed, ModelNotFound
from hostler.client._rqstore import make_queue
from hostler.schemas import Keys
from hostler.worker.control.host_agent import HostAgent
from hostler.worker.models.registry import scan
from hostler.worker.serving.worker import ModelWorker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_jobs import push_raw, wait_ended
from rq.job import JobStatus


def test_jobs_are_served_in_fifo_order(served: tuple[Client, ModelWorker], connection: redis.Redis) -> None:
    client, _ = served
    # stream() enqueues at once, so all five wait in the queue together.
    streams = [client.stream("tiny", f"p{i}", max_tokens=i + 1) for i in range(5)]
    texts = ["".join(s) for s in reversed(streams)][::-1]
    assert texts[2] == " w0 w1 w2"
    finished = make_queue(connection, Keys().queue_name("tiny")).finished_job_registry
    records = [connection.hgetall(f"rq:job:{j}") for j in finished.get_job_ids()]
    records.sort(key=lambda r: r[b"started_at"])
    order = [json.loads(zlib.decompress(r[b"data"]))[3]["prompt"] for r in records]
    assert order == [f"p{i}" for i in range(5)]


def test_stream_pieces_join_to_the_stored_result(served: tuple[Client, ModelWorker]) -> None:
    client, _ = served
    stream = client.stream("tiny", "hello", max_tokens=7)
    pieces = list(stream)
    # The first piece goes at once; the fake engine's next six come within the stream interval.
    assert pieces[0] == " w0"
    assert "".join(pieces) == "".join(f" w{i}" for i in range(7))
    assert stream.result is not None and stream.result.text == "".join(pieces)


def test_unknown_model_raises_before_enqueue(served: tuple[Client, ModelWorker], connection: redis.Redis) -> None:
    client, _ = served
    with pytest.raises(ModelNotFound) as caught:
        client.complete("nope", "hi")
    assert "tiny" in str(caught.value) and "nope" in str(caught.value)
    assert connection.llen(make_queue(connection, Keys().queue_name("nope")).key) == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"temperature": 9.0}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"bogus": 1}, "bogus"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_invalid_params_name_the_field(
    served: tuple[Client, ModelWorker], params: dict[str, object], field: str
) -> None:
    client, _ = served
    with pytest.raises(InvalidRequest, match=field):
        client.complete("tiny", "hi", **params)  # type: ignore[arg-type]


def test_load_failure_is_a_job_error_and_the_worker_keeps_serving(
    redis_url: str, models_dir: Path, connection: redis.Redis
) -> None:
    keys = Keys()
    sup = HostAgent(connection=connection, keys=keys, redis_url=redis_url, models_dir=models_dir, host="u")
    sup.rescan()
    sup.report()
    manifest = scan(models_dir).models["broken"]
    worker = ModelWorker(connection=connection, keys=keys, manifest=manifest, engine_factory=FakeEngine)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with Client(redis_url, timeout=20) as client:
            for _ in range(2):
                with pytest.raises(JobFailed) as caught:
                    client.complete("broken", "hi")
                assert caught.value.code == "load_failed"
                assert "broken.gguf" in caught.value.message
        assert thread.is_alive()
    finally:
        worker.stop()
        thread.join(10)


def test_a_pickle_payload_is_never_unpickled(
    served: tuple[Client, ModelWorker], connection: redis.Redis, tmp_path: Path
) -> None:
    client, _ = served
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps(("os.system", None, (), {}, Exploit()))
    job_id = push_raw(connection, "tiny", {"data": zlib.compress(payload)})
    assert wait_ended(connection, job_id) == "invalid_job"
    assert not marker.exists()
    # rq's own record says failed, with a reason that names the problem
    assert connection.hget(f"rq:job:{job_id}", "status") == JobStatus.FAILED.value.encode()
    assert client.complete("tiny", "still serving", max_tokens=2).text == " w0 w1"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (json.dumps(["os.system", None, ["touch /tmp/x"], {}]), "invalid_job"),
        (json.dumps(["hostler.job.completion", None, [], {"model": "tiny", "prompt": 5}]), "invalid_job"),
        (
            json.dumps(
                [
                    "hostler.job.completion",
                    None,
                    [],
                    {"kind": "completion", "model": "tiny", "prompt": "x", "params": {"max_tokens": -4}},
                ]
            ),
            "invalid_job",
        ),
        (
            json.dumps(["hostler.job.chat", None, [], {"kind": "completion", "model": "tiny", "prompt": "x"}]),
            "invalid_job",
        ),
        (
            json.dumps(["hostler.job.completion", None, [], {"kind": "completion", "model": "other", "prompt": "x"}]),
            "invalid_job",
        ),
        ("{not json", "invalid_job"),
    ],
)
def test_malformed_payloads_fail_one_by_one(
    served: tuple[Client, ModelWorker], connection: redis.Redis, data: str, code: str
) -> None:
    client, _ = served
    job_id = push_raw(connection, "tiny", {"data": zlib.compress(data.encode())})
    assert wait_ended(connection, job_id) == code
    assert client.count_tokens("tiny", "a b c") == 4


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=2048))
def test_fuzzed_payloads_never_stop_the_worker(
    served: tuple[Client, ModelWorker], connection: redis.Redis, blob: bytes
) -> None:
    # Rung, so each example is taken at once (the malformed payloads above are pushed as plain rq would).
    job_id = push_raw(connection, "tiny", {"data": blob}, ring=True)
    assert wait_ended(connection, job_id) in ("invalid_job",)


def test_load_params_persist_until_unload(served: tuple[Client, ModelWorker], connection: redis.Redis) -> None:
    client, worker = served
    first = client.load("tiny", n_ctx=512)
    assert first.reloaded and first.params.n_ctx == 512
    assert client.load("tiny", n_ctx=512).reloaded is False
    assert worker.load_params is not None and worker.load_params.n_ctx == 512
    assert client.unload("tiny").was_loaded is True
    assert not connection.exists(Keys().load_params("tiny"))
