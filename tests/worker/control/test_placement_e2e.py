"""Placement across several host agents: real processes, real workers, real models, one Redis.

Host agents run with --max-memory sized in units of what the controller reserves for one
SmolLM2 worker (`need`), so each test knows how many fit where. Copies of SmolLM2 under
other ids (symlinks) stand for different models of the same size.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from cluster import Cluster
from hostler import Client, CompletionResult, JobFailed, NoCapacity
from hostler.schemas import LoadParams
from hostler.worker.memory.estimate import WORKER_BASE_BYTES, estimate

pytestmark = pytest.mark.e2e


def need_of(path: Path) -> int:
    return estimate(path, "llama", LoadParams()).total_bytes + WORKER_BASE_BYTES


def models(tmp_path: Path, name: str, files: dict[str, Path]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for model_id, path in files.items():
        (folder / f"{model_id}.gguf").symlink_to(path)
    return folder


def ask(client: Client, model: str, max_tokens: int = 8) -> CompletionResult:
    return client.complete(model, "The capital of France is", max_tokens=max_tokens, temperature=0)


@pytest.mark.parametrize(("policy", "chosen"), [("most-free", "big"), ("best-fit", "small")])
def test_policy_picks_the_host(cluster: Cluster, tmp_path: Path, smollm2: Path, policy: str, chosen: str) -> None:
    need = need_of(smollm2)
    cluster.host("big", models(tmp_path, "big", {"sm": smollm2}), 4 * need)
    cluster.host("small", models(tmp_path, "small", {"sm": smollm2}), int(1.5 * need))
    cluster.controller("controller", "--policy", policy)
    assert ask(cluster.client, "sm").text
    assert cluster.hosts_of("sm") == [chosen]
    assert cluster.loaded_on("sm") == [chosen]


def test_evicts_the_least_recently_used_idle_model_never_a_busy_one(
    cluster: Cluster, tmp_path: Path, smollm2: Path
) -> None:
    need = need_of(smollm2)
    copies = {m: smollm2 for m in ("sm-a", "sm-b", "sm-c")}
    cluster.host("solo", models(tmp_path, "solo", copies), int(2.5 * need))
    cluster.controller()
    client = cluster.client
    ask(client, "sm-a")
    ask(client, "sm-b")
    assert cluster.hosts_of("sm-a") == ["solo"] and cluster.hosts_of("sm-b") == ["solo"]
    # Both idle; a third only fits if one goes, and sm-a was used least recently.
    ask(client, "sm-c")
    assert {a.model for a in cluster.placements()} == {"sm-b", "sm-c"}
    # Keep sm-b busy with queued work (more jobs than its worker has slots); sm-a must then take
    # the place of the idle sm-c.
    jobs = 3 * LoadParams().n_parallel
    with ThreadPoolExecutor(jobs) as pool:
        busy = [pool.submit(ask, client, "sm-b", 48) for _ in range(jobs)]
        cluster.wait_for(lambda: client.queue_length("sm-b") > 0 or None, "sm-b to have a queue")
        ask(client, "sm-a")
        assert {a.model for a in cluster.placements()} == {"sm-b", "sm-a"}
        assert all(f.result().text for f in busy)


def test_no_capacity_says_what_is_needed_and_what_each_host_has(
    cluster: Cluster, tmp_path: Path, gemma3: Path, smollm2: Path
) -> None:
    need = need_of(gemma3)
    cluster.host("tiny-host", models(tmp_path, "t", {"gemma3-270m": gemma3}), int(0.6 * need))
    cluster.host("other", models(tmp_path, "o", {"sm": smollm2}), 4 * need)
    cluster.controller()
    with pytest.raises(NoCapacity) as caught:
        cluster.client.complete("gemma3-270m", "Hello", max_tokens=4)
    message = caught.value.message
    assert "model 'gemma3-270m' needs" in message and "weights" in message
    assert "tiny-host:" in message and "free of" in message
    assert "other: does not have it on disk" in message
    assert cluster.placements("gemma3-270m") == []


def test_concurrent_placements_never_oversubscribe_a_host(cluster: Cluster, tmp_path: Path, smollm2: Path) -> None:
    need = need_of(smollm2)
    copies = {m: smollm2 for m in ("sm-a", "sm-b")}
    cluster.host("one", models(tmp_path, "one", copies), int(1.5 * need))
    cluster.host("two", models(tmp_path, "two", copies), int(1.5 * need))
    cluster.controller()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda m: ask(cluster.client, m), ["sm-a", "sm-b", "sm-a", "sm-b"]))
    assert all(r.text for r in results)
    hosts = [a.host for a in cluster.placements()]
    assert sorted(hosts) == ["one", "two"], "each host fits one model: they must not share one"


def test_concurrent_loads_become_one_load(cluster: Cluster, tmp_path: Path, smollm2: Path) -> None:
    need = need_of(smollm2)
    cluster.host("one", models(tmp_path, "one", {"sm": smollm2}), 4 * need)
    cluster.controller()
    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(lambda _: cluster.client.load("sm", n_ctx=1024), range(4)))
    assert all(r.params.n_ctx == 1024 for r in loaded)
    reports = [w for w in cluster.client._worker_reports() if w.model == "sm"]
    assert len(reports) == 1 and reports[0].loads == 1


def test_a_killed_host_agents_models_are_placed_again_and_its_jobs_complete(
    cluster: Cluster, tmp_path: Path, smollm2: Path
) -> None:
    need = need_of(smollm2)
    cluster.host("first", models(tmp_path, "first", {"sm": smollm2}), 4 * need)
    cluster.host("second", models(tmp_path, "second", {"sm": smollm2}), 2 * need)
    cluster.controller()
    client = cluster.client
    ask(client, "sm")
    assert cluster.hosts_of("sm") == ["first"]
    with ThreadPoolExecutor(24) as pool:
        jobs = [pool.submit(ask, client, "sm", 32) for _ in range(24)]
        cluster.wait_for(lambda: client.queue_length("sm") > 6 or None, "a queue to build up")
        cluster.kill("first")
        results = [job.result(timeout=120) for job in jobs]
    assert all(r.text for r in results)
    assert cluster.hosts_of("sm") == ["second"]
    assert "first" not in [h.host for h in client.status().hosts]


def test_a_killed_controller_is_replaced_by_the_standby(cluster: Cluster, tmp_path: Path, smollm2: Path) -> None:
    need = need_of(smollm2)
    cluster.host("one", models(tmp_path, "one", {"sm": smollm2}), 4 * need)
    cluster.controller("c1")
    cluster.controller("c2")
    connection = cluster.client.connection
    leader = cluster.wait_for(lambda: connection.get(cluster.keys.controller), "a leader")
    first = next(
        name for name, p in cluster.processes.items() if name in ("c1", "c2") and str(p.pid) in leader.decode()
    )
    cluster.kill(first)
    started = time.monotonic()
    cluster.wait_for(
        lambda: (v := connection.get(cluster.keys.controller)) is not None and v != leader or None,
        "the standby to lead",
        timeout=15,
    )
    assert time.monotonic() - started < 10
    # The new leader places a model nobody has asked for yet.
    assert ask(cluster.client, "sm").text


def test_replicas_and_keep_alive(cluster: Cluster, tmp_path: Path, smollm2: Path) -> None:
    need = need_of(smollm2)
    cluster.host("one", models(tmp_path, "one", {"sm": smollm2}), 2 * need)
    cluster.host("two", models(tmp_path, "two", {"sm": smollm2}), 2 * need)
    cluster.controller()
    cluster.client.load("sm", replicas=2, keep_alive=3)
    cluster.wait_for(lambda: cluster.loaded_on("sm") == ["one", "two"] or None, "two loaded replicas")
    # Idle past keep_alive: both replicas unload and their workers exit.
    cluster.wait_for(lambda: not cluster.client.status().workers or None, "keep_alive to unload", timeout=30)
    assert cluster.placements("sm") == []


def test_autoscale_adds_a_replica_while_the_queue_is_long_and_removes_it(
    cluster: Cluster, tmp_path: Path, smollm2: Path
) -> None:
    need = need_of(smollm2)
    # Each host on cores of its own, as on two machines: two agents that both took every core
    # would run two workers' llama.cpp threads on the same cores, which made the drain 4x slower
    # than one replica alone (139 s against 35 s here) and outran the clients' timeout in CI.
    cores = sorted(os.sched_getaffinity(0))
    halves = ({*cores[: len(cores) // 2]}, {*cores[len(cores) // 2 :]}) if len(cores) > 1 else (None, None)
    cluster.host("one", models(tmp_path, "one", {"sm": smollm2}), 2 * need, cores=halves[0])
    cluster.host("two", models(tmp_path, "two", {"sm": smollm2}), 2 * need, cores=halves[1])
    cluster.controller(
        "controller", "--autoscale", "--scale-up-queue", "4", "--scale-up-after", "1", "--scale-down-after", "2"
    )
    client = cluster.client
    # Clients enough to keep far more than 4 jobs waiting beyond the worker's slots, for longer
    # than the first replica takes to drain them.
    slots = LoadParams().n_parallel
    with ThreadPoolExecutor(4 * slots) as pool:
        jobs = [pool.submit(ask, client, "sm", 48) for _ in range(12 * slots)]
        cluster.wait_for(lambda: len(cluster.hosts_of("sm")) == 2 or None, "a second replica")
        assert all(job.result(timeout=120).text for job in jobs)
    cluster.wait_for(lambda: len(cluster.hosts_of("sm")) == 1 or None, "the extra replica to go", timeout=30)


def test_a_dead_machines_running_job_fails_with_a_reason_and_the_queue_moves_on(
    cluster: Cluster, tmp_path: Path, smollm2: Path
) -> None:
    need = need_of(smollm2)
    cluster.host("first", models(tmp_path, "first", {"sm": smollm2}), 4 * need)
    cluster.host("second", models(tmp_path, "second", {"sm": smollm2}), 2 * need)
    cluster.controller()
    client = cluster.client
    ask(client, "sm")
    [worker] = [w for w in client.status().workers if w.host == "first"]
    worker_pid = worker.pid
    # More jobs than the worker's slots, so that some wait in the queue.
    with ThreadPoolExecutor(20) as pool:
        jobs = [pool.submit(ask, client, "sm", 32) for _ in range(20)]
        cluster.wait_for(lambda: client.queue_length("sm") > 4 or None, "a queue to build up")
        # The whole machine goes: agent and worker at once, mid-job.
        cluster.kill("first")
        os.kill(worker_pid, signal.SIGKILL)
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(job.result(timeout=300).finish_reason)
            except JobFailed as exc:
                outcomes.append(exc.code)
    # The machine died mid-job: the jobs its worker was running (at least one, at most as many as
    # its engine runs at once) fail with the reason; every other job is served by the second host.
    died = outcomes.count("host_died") + outcomes.count("worker_died")
    assert 1 <= died <= worker.slots, (outcomes, worker.slots)
    assert all(o in ("length", "stop", "host_died", "worker_died") for o in outcomes), outcomes
    assert cluster.hosts_of("sm") == ["second"]


def test_a_model_that_keeps_crashing_is_reported_not_restarted_forever(
    redis_url: str, tmp_path: Path, smollm2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hostler.client._reads import host_reports, run_sync
    from hostler.schemas import Keys
    from hostler.worker.control import host_agent
    from hostler.worker.control.controller import Controller

    monkeypatch.setattr(host_agent, "MAX_BACKOFF_S", 0.1)
    connection = redis.Redis.from_url(redis_url)
    keys = Keys()
    # An option the worker command refuses: every start exits at once with code 2.
    agent = host_agent.HostAgent(
        connection=connection,
        keys=keys,
        redis_url=redis_url,
        models_dir=models(tmp_path, "m", {"sm": smollm2}),
        host="crashy",
        worker_args=("--no-such-option",),
    )
    agent.rescan()
    agent.report()
    controller = Controller(connection=redis.Redis.from_url(redis_url), keys=keys)
    stop = threading.Event()

    def loop(step: Callable[[], None]) -> None:
        while not stop.is_set():
            step()

    threads = [
        threading.Thread(target=loop, args=(lambda: agent.step(0.1),), daemon=True),
        threading.Thread(target=loop, args=(lambda: controller.lead() and controller.step(0.1),), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        with Client(redis_url, timeout=90) as client:
            with pytest.raises(JobFailed) as caught:
                client.complete("sm", "Hello", max_tokens=4)
        assert caught.value.code == "model_crashing"
        assert "crashy: worker exited with code 2 (5 times in a row)" in caught.value.message
        (report,) = run_sync(connection, host_reports(keys))
        assert report.host == "crashy" and "sm" in report.crashing
        spawned = agent.crashes["sm"].count
        time.sleep(1.0)
        assert agent.crashes["sm"].count == spawned == host_agent.MAX_CRASHES and not agent.children
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        agent.shutdown()
        controller.resign()
        connection.close()
