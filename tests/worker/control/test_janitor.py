"""Queue policy on a real Redis: priority classes, the bound, waiting keys, start deadlines,
clean-up, request size. Workers here run a fake engine in a thread (worker logic only)."""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from click.testing import CliRunner
from fake_engine import FakeEngine
from hostler import Client, InvalidRequest, JobFailed, QueueFull
from hostler.client._rqstore import read_outcome
from hostler.schemas import Keys
from hostler.worker.cli.main import main
from hostler.worker.control.host_agent import HostAgent
from hostler.worker.control.janitor import Janitor
from hostler.worker.models.registry import scan
from hostler.worker.serving.worker import ModelWorker
from raw_jobs import push_raw, ring_bell, wait_ended
from rq.job import Job as RqJob
from rq.serializers import JSONSerializer

T = TypeVar("T")


@pytest.fixture
def idle(redis_url: str, models_dir: Path) -> Iterator[tuple[Client, redis.Redis]]:
    """A host report naming the models, and no worker yet: jobs stay queued."""
    conn = redis.Redis.from_url(redis_url)
    agent = HostAgent(connection=conn, keys=Keys(), redis_url=redis_url, models_dir=models_dir, host="unit")
    agent.rescan()
    agent.report()
    client = Client(redis_url, timeout=30)
    yield client, conn
    client.close()
    conn.close()


class Running:
    """Starts components in threads and stops them all at the end of a test."""

    def __init__(self, redis_url: str, models_dir: Path) -> None:
        self.redis_url = redis_url
        self.models_dir = models_dir
        self.stops: list[tuple[Callable[[], None], threading.Thread]] = []
        self.models: set[str] = set()

    def worker(self, model: str = "tiny") -> ModelWorker:
        manifest = scan(self.models_dir).models[model]
        conn = redis.Redis.from_url(self.redis_url)
        worker = ModelWorker(connection=conn, keys=Keys(), manifest=manifest, engine_factory=FakeEngine, host="unit")
        self._start(worker.run, worker.stop)
        self.models.add(model)
        return worker

    def janitor(self) -> Janitor:
        janitor = Janitor(connection=redis.Redis.from_url(self.redis_url), keys=Keys())
        self._start(janitor.run, janitor.stop)
        return janitor

    def _start(self, run: Callable[[], None], stop: Callable[[], None]) -> None:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.stops.append((stop, thread))

    def close(self) -> None:
        for stop, _ in self.stops:
            stop()
        with redis.Redis.from_url(self.redis_url) as conn:
            for model in self.models:
                ring_bell(conn, model)  # its workers stop now, not at the end of their 1 s wait for a job
        for _, thread in self.stops:
            thread.join(10)


@pytest.fixture
def running(redis_url: str, models_dir: Path) -> Iterator[Running]:
    parts = Running(redis_url, models_dir)
    yield parts
    parts.close()


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def started_at(conn: redis.Redis, job_id: str) -> str:
    job = RqJob.fetch(job_id, connection=conn, serializer=JSONSerializer)
    assert job.started_at is not None
    return job.started_at.isoformat()


def test_interactive_jobs_are_taken_before_batch_ones_fifo_within_each(
    idle: tuple[Client, redis.Redis], running: Running
) -> None:
    client, conn = idle
    batch = [client.submit("tiny", f"batch {i}", max_tokens=2) for i in range(5)]
    interactive = [client.submit("tiny", f"chat {i}", max_tokens=2, priority="interactive") for i in range(3)]
    running.worker()
    for handle in batch + interactive:
        handle.result(timeout=20)
    order = sorted(batch + interactive, key=lambda h: started_at(conn, h.id))
    assert [h.id for h in order] == [h.id for h in interactive + batch]


def test_a_full_queue_refuses_the_job_and_writes_nothing(idle: tuple[Client, redis.Redis]) -> None:
    client, conn = idle
    conn.hset(Keys().max_queue, "tiny", 3)
    for i in range(3):
        client.submit("tiny", f"job {i}", max_tokens=2)
    records = len(conn.keys("rq:job:*"))
    with pytest.raises(QueueFull) as caught:
        client.submit("tiny", "one too many", max_tokens=2, priority="interactive")
    assert (caught.value.bound, caught.value.length) == (3, 3)
    assert caught.value.retry_after >= 1
    assert "bound 3" in str(caught.value) and "3 jobs waiting" in str(caught.value)
    assert len(conn.keys("rq:job:*")) == records
    assert client.queue_length("tiny") == 3
    # Other models have their own bound (the default).
    client.submit("tiny-base", "elsewhere", max_tokens=2)


def test_concurrent_clients_never_overshoot_the_bound(idle: tuple[Client, redis.Redis], redis_url: str) -> None:
    _, conn = idle
    conn.hset(Keys().max_queue, "*", 10)
    accepted: list[str] = []
    refused: list[int] = []
    lock = threading.Lock()

    def enqueue() -> None:
        with Client(redis_url) as own:
            for i in range(5):
                try:
                    handle = own.submit("tiny", f"x {i}", max_tokens=2)
                except QueueFull as exc:
                    with lock:
                        refused.append(exc.length)
                else:
                    with lock:
                        accepted.append(handle.id)

    threads = [threading.Thread(target=enqueue) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(accepted) == 10 and len(refused) == 20
    assert set(refused) == {10}
    assert len(conn.keys("rq:job:*")) == 10


def test_a_queued_job_whose_client_stopped_waiting_is_canceled_unrun(
    idle: tuple[Client, redis.Redis], running: Running
) -> None:
    client, conn = idle
    running.janitor()
    pieces = client.stream("tiny", "nobody will read this", max_tokens=3)
    [job_id] = [k.decode().removeprefix("hostler:waiting:") for k in conn.keys("hostler:waiting:*")]
    pieces.close()  # the client gives up before any worker took the job
    eventually(lambda: read_outcome(conn, job_id), "the job to end")
    outcome = read_outcome(conn, job_id)
    assert outcome is not None and outcome.code == "client_gone"
    assert client.queue_length("tiny") == 0
    assert not conn.hlen(Keys().leases)
    # A worker started now never sees the canceled job: the next one is its first.
    worker = running.worker()
    assert client.complete("tiny", "next", max_tokens=2).text == " w0 w1"
    # (counted just after the done event goes out)
    eventually(lambda: worker.ends.jobs_done == 1, "the worker to count its job")
    time.sleep(0.2)
    assert worker.ends.jobs_done == 1


def test_a_client_deadline_lapses_its_waiting_key(idle: tuple[Client, redis.Redis], running: Running) -> None:
    client, conn = idle
    running.janitor()
    started = time.monotonic()
    with pytest.raises(Exception, match="did not finish within its timeout"):
        client.complete("tiny", "no worker", max_tokens=2, timeout=1.0)
    assert time.monotonic() - started < 5
    eventually(lambda: client.queue_length("tiny") == 0, "the janitor to cancel the job")


def test_the_worker_cancels_a_job_whose_client_left_if_it_gets_there_first(
    idle: tuple[Client, redis.Redis], running: Running
) -> None:
    client, conn = idle
    pieces = client.stream("tiny", "abandoned", max_tokens=3)
    [job_id] = [k.decode().removeprefix("hostler:waiting:") for k in conn.keys("hostler:waiting:*")]
    pieces.close()
    running.worker()  # no janitor: the worker itself checks the waiting key before running
    assert wait_ended(conn, job_id) == "client_gone"
    assert client.complete("tiny", "still serving", max_tokens=2).text == " w0 w1"


@pytest.mark.parametrize("with_janitor", [True, False])
def test_a_job_not_started_by_its_deadline_expires(
    idle: tuple[Client, redis.Redis], running: Running, with_janitor: bool
) -> None:
    client, conn = idle
    if with_janitor:
        running.janitor()
    late = client.submit("tiny", "late", max_tokens=2, start_within=0.5)
    patient = client.submit("tiny", "patient", max_tokens=2, start_within=60)
    time.sleep(1.0)
    if with_janitor:
        eventually(lambda: late.status() == "canceled", "the janitor to expire the job")
    running.worker()
    with pytest.raises(JobFailed) as caught:
        late.result(timeout=10)
    assert caught.value.code == "expired" and "start deadline" in caught.value.message
    assert patient.result(timeout=10).text == " w0 w1"  # type: ignore[union-attr]


def test_clean_up_cancels_jobs_older_than_asked(idle: tuple[Client, redis.Redis], redis_url: str) -> None:
    client, conn = idle
    old = [client.submit("tiny", f"old {i}", max_tokens=2) for i in range(3)]
    time.sleep(1.2)
    new = client.submit("tiny", "new", max_tokens=2, priority="interactive")
    result = CliRunner().invoke(main, ["clean-up", "--redis", redis_url, "--model", "tiny", "--older-than", "1"])
    assert result.exit_code == 0, result.output
    assert "removed 3 queued job(s) of tiny" in result.output
    assert [h.status() for h in old] == ["canceled"] * 3
    assert new.status() == "queued" and client.queue_length("tiny") == 1
    with pytest.raises(JobFailed, match="clean-up"):
        old[0].result(timeout=5)


def test_a_submitted_job_can_be_canceled_while_it_waits(idle: tuple[Client, redis.Redis]) -> None:
    client, _ = idle
    handle = client.submit("tiny", "never mind", max_tokens=2)
    assert client.job(handle.id).cancel() is True
    assert handle.status() == "canceled"
    assert handle.cancel() is False


def test_oversized_requests_are_refused_on_both_sides(
    idle: tuple[Client, redis.Redis], running: Running, redis_url: str
) -> None:
    client, conn = idle
    huge = [{"role": "user", "content": "x" * 3_000_000}] * 3
    with pytest.raises(InvalidRequest, match="bytes; the limit is 8388608 bytes"):
        client.chat("tiny", huge)
    assert client.queue_length("tiny") == 0
    # Written straight into the queue: a small record that inflates past the limit.
    bomb = zlib.compress(b'["hostler.job.completion", null, [], {"prompt": "' + b"a" * 20_000_000 + b'"}]')
    job_id = push_raw(conn, "tiny", {"data": bomb})
    running.worker()
    assert wait_ended(conn, job_id) == "invalid_job"
    outcome = read_outcome(conn, job_id)
    assert outcome is not None and "once decompressed" in (outcome.message or "")
    assert client.complete("tiny", "still serving", max_tokens=2).text == " w0 w1"


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/b", "..", "x/../../etc"])
def test_path_tricks_are_refused_before_anything_is_enqueued(idle: tuple[Client, redis.Redis], bad: str) -> None:
    client, conn = idle
    with pytest.raises(InvalidRequest, match="model"):
        client.complete(bad, "x")
    with pytest.raises(InvalidRequest, match="model"):
        client.submit(bad, "x")
    assert not conn.keys("rq:job:*")


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"stop": [f"s{i}" for i in range(40)]}, "stop"),
        ({"priority": "urgent"}, "priority"),
        ({"job_timeout": -1}, "duration"),
        ({"start_within": "soon"}, "soon"),
    ],
)
def test_limits_are_checked_before_enqueue_and_named(
    idle: tuple[Client, redis.Redis], params: dict[str, object], named: str
) -> None:
    client, conn = idle
    with pytest.raises(InvalidRequest, match=named):
        client.complete("tiny", "x", **params)  # type: ignore[arg-type]
    assert not conn.keys("rq:job:*")


def test_a_waiting_key_lapsed_in_a_failover_is_not_judged_until_the_new_server_settles(
    idle: tuple[Client, redis.Redis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failover redis-py's retries hid: the janitor's next pass reads a promoted server where the
    job is queued but its waiting key is gone (its renewals went to a server that was then
    discarded), while its client still waits. Not client_gone until a settle period has passed."""
    import redis_proc

    monkeypatch.setattr("hostler.worker.outage.SETTLE_S", 0.5)
    client, conn = idle
    janitor = Janitor(connection=conn, keys=Keys())
    assert janitor.expire_leases() == 0  # the server it starts with
    with client.stream("tiny", "still wanted", max_tokens=3):
        [waiting] = conn.keys("hostler:waiting:*")
        job_id = waiting.decode().removeprefix("hostler:waiting:")
        with redis_proc.redis_server(tmp_path / "promoted") as port:
            promoted = redis.Redis(port=port)
            for key in conn.scan_iter():
                if key != waiting:
                    promoted.restore(key, max(int(conn.pttl(key)), 0), conn.dump(key), replace=True)
            time.sleep(0.6)  # up longer than a settle period: only its run id tells it apart
            janitor.connection = promoted
            assert janitor.expire_leases() == 0
            assert read_outcome(promoted, job_id) is None
            time.sleep(0.6)
            assert janitor.expire_leases() == 1
            outcome = read_outcome(promoted, job_id)
            assert outcome is not None and outcome.code == "client_gone"
            promoted.close()
