"""The controller's step on a real Redis, without processes: host reports are written as an
agent writes them, and the step's decisions are read back from the assignment hashes.

These pin down the bookkeeping a step keeps as it decides (assignments indexed by model, host
views rebuilt only for the host that changed), which scripts/simulate_hosts.py showed must
not cost hosts x models."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import pytest
import redis
from hostler.client._reads import status
from hostler.client._steps import run_sync
from hostler.schemas import Assignment, GpuInfo, HostReport, HostStatus, Keys, LoadParams, ModelInfo, ModelSpec
from hostler.worker.control.controller import Controller
from hostler.worker.control.host_report import write_report
from hostler.worker.memory.estimate import worker_need
from model_infos import info_of

GIB = 1024**3
KEYS = Keys()


def report(host: str, models: list[ModelInfo], ram: int, gpus: list[GpuInfo] | None = None) -> HostReport:
    return HostReport(
        host=host,
        pid=1,
        models_dir="/models",
        models=[m.model_copy(update={"host": host}) for m in models],
        ram_total_bytes=ram,
        ram_available_bytes=ram,
        gpus=gpus or [],
        updated_at=time.time(),
    )


def announce(conn: redis.Redis, *reports: HostReport) -> None:
    for r in reports:
        run_sync(conn, write_report(KEYS, r, None))


def demand(conn: redis.Redis, model: str) -> None:
    """A job waiting for a model no worker serves, as the client leaves it."""
    conn.rpush(f"rq:queue:{KEYS.queue_name(model)}", f"job-for-{model}")
    conn.rpush(KEYS.demand, model)


def placed(conn: redis.Redis) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for host in sorted(h.decode() for h in conn.smembers(KEYS.hosts)):
        for raw in conn.hgetall(KEYS.assignments(host)).values():
            found.setdefault(Assignment.model_validate_json(raw).model, []).append(host)
    return found


def models(tiny: Path, *ids: str) -> list[ModelInfo]:
    return [info_of(tiny, LoadParams(), model_id=m) for m in ids]


def test_a_demanded_model_goes_to_the_host_with_most_room(
    connection: redis.Redis, model_files: dict[str, Path]
) -> None:
    catalog = models(model_files["tiny"], "a", "b")
    announce(connection, report("small", catalog, 2 * GIB), report("big", catalog, 8 * GIB))
    demand(connection, "a")
    Controller(connection=connection, keys=KEYS).step(wait=0.01)
    assert placed(connection) == {"a": ["big"]}


def test_an_eviction_and_a_placement_in_one_step_leave_one_picture(
    connection: redis.Redis, model_files: dict[str, Path]
) -> None:
    catalog = models(model_files["tiny"], "a", "b", "c")
    need = worker_need(catalog[0]).ram
    announce(connection, report("solo", catalog, int(2.5 * need)))
    controller = Controller(connection=connection, keys=KEYS)
    for model in ("a", "b"):
        demand(connection, model)
        controller.step(wait=0.01)
        connection.delete(f"rq:queue:{KEYS.queue_name(model)}")  # its worker took the job
    assert placed(connection) == {"a": ["solo"], "b": ["solo"]}
    # c fits only once the least recently placed idle model (a) goes: both in one step.
    demand(connection, "c")
    controller.step(wait=0.01)
    assert placed(connection) == {"b": ["solo"], "c": ["solo"]}
    # Nothing waits for a any more: the next step changes nothing.
    connection.delete(f"rq:queue:{KEYS.queue_name('c')}")
    controller.step(wait=0.01)
    assert placed(connection) == {"b": ["solo"], "c": ["solo"]}


def test_a_spec_offloading_every_layer_reserves_room_on_one_gpu(
    connection: redis.Redis, model_files: dict[str, Path]
) -> None:
    catalog = models(model_files["tiny"], "a", "b")
    offload = LoadParams(n_gpu_layers=-1)
    need = worker_need(catalog[0], offload)
    gpus = [
        GpuInfo(index=0, name="small", total_bytes=2 * need.vram, free_bytes=need.vram // 2),
        GpuInfo(index=1, name="large", total_bytes=3 * need.vram, free_bytes=3 * need.vram),
    ]
    announce(connection, report("gpu", catalog, 8 * GIB, gpus))
    controller = Controller(connection=connection, keys=KEYS)
    for model in ("a", "b"):
        connection.set(KEYS.spec(model), ModelSpec(model=model, params=offload, pinned=True).model_dump_json())
        demand(connection, model)
        controller.step(wait=0.01)
    raw = connection.hgetall(KEYS.assignments("gpu"))
    assigned = {a.model: a for a in (Assignment.model_validate_json(v) for v in raw.values())}
    # Both on GPU 1, the only one with room, and each reserves its offload there.
    assert {m: (a.gpu, a.vram_bytes, a.estimate_bytes) for m, a in assigned.items()} == {
        "a": (1, need.vram, need.ram),
        "b": (1, need.vram, need.ram),
    }


def test_an_idle_model_past_its_keep_alive_is_unloaded(connection: redis.Redis, model_files: dict[str, Path]) -> None:
    catalog = models(model_files["tiny"], "a", "b")
    announce(connection, report("solo", catalog, 8 * GIB))
    long_ago = time.time() - 3600
    for model in ("a", "b"):
        old = Assignment(model=model, host="solo", estimate_bytes=GIB, placed_at=long_ago, reason="test")
        connection.hset(KEYS.assignments("solo"), model, old.model_dump_json())
    connection.set(KEYS.spec("b"), ModelSpec(model="b", keep_alive_s=-1).model_dump_json())
    Controller(connection=connection, keys=KEYS).step(wait=0.01)
    assert placed(connection) == {"b": ["solo"]}


def test_full_collections_wait_for_the_controller_while_it_runs_and_not_after(connection: redis.Redis) -> None:
    before = gc.get_threshold()
    controller = Controller(connection=connection, keys=KEYS)
    seen: list[tuple[int, int, int]] = []
    thread = threading.Thread(target=controller.run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not controller.leading and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(gc.get_threshold())
    finally:
        controller.stop()
        thread.join(10)
    assert seen[0][:2] == before[:2] and seen[0][2] > before[2]
    assert gc.get_threshold() == before
    assert not connection.exists(KEYS.controller)  # it resigned on its way out


def view(conn: redis.Redis) -> dict[str, HostStatus | str]:
    """The view hash, a field the controller did not write kept as its raw text."""
    found: dict[str, HostStatus | str] = {}
    for host, raw in conn.hgetall(KEYS.view).items():
        text = raw.decode()
        found[host.decode()] = HostStatus.model_validate_json(text) if text.startswith("{") else text
    return found


@pytest.fixture
def two_hosts(connection: redis.Redis, model_files: dict[str, Path]) -> tuple[Controller, list[ModelInfo]]:
    """Hosts one (4 GiB) and two (8 GiB) with model a on disk, after a controller's first step."""
    catalog = models(model_files["tiny"], "a")
    announce(connection, report("one", catalog, 4 * GIB), report("two", catalog, 8 * GIB))
    controller = Controller(connection=connection, keys=KEYS)
    controller.step(wait=0.01)
    return controller, catalog


def test_the_view_rewrites_a_host_only_when_its_report_or_its_placements_changed(
    connection: redis.Redis, two_hosts: tuple[Controller, list[ModelInfo]]
) -> None:
    controller, catalog = two_hosts
    first = view(connection)
    assert sorted(first) == ["one", "two"] and connection.ttl(KEYS.view) > 0
    # Marks in place of both entries show which ones the next steps write again.
    connection.hset(KEYS.view, mapping={"one": "kept", "two": "kept"})
    controller.step(wait=0.01)
    assert view(connection) == {"one": "kept", "two": "kept"}  # nothing changed, nothing written
    announce(connection, report("one", catalog, 5 * GIB))
    controller.step(wait=0.01)
    now = view(connection)
    assert now["two"] == "kept"
    assert isinstance(now["one"], HostStatus) and now["one"].ram_total_bytes == 5 * GIB
    # A placement rewrites its host, though the host's report is the same.
    demand(connection, "a")
    controller.step(wait=0.01)
    now = view(connection)
    assert placed(connection) == {"a": ["two"]}
    assert isinstance(now["two"], HostStatus) and set(now["two"].placed) == {"a"}


def test_a_vanished_view_is_written_whole_and_a_gone_host_leaves_it(
    connection: redis.Redis, two_hosts: tuple[Controller, list[ModelInfo]]
) -> None:
    controller, catalog = two_hosts
    connection.delete(KEYS.view)
    announce(connection, report("one", catalog, 5 * GIB))  # one host changed, the other did not
    controller.step(wait=0.01)
    assert sorted(view(connection)) == ["one", "two"]
    connection.delete(KEYS.host("two"))  # its state expired: the host is dead
    controller.step(wait=0.01)
    assert sorted(view(connection)) == ["one"]


def test_status_names_the_leader_and_its_view_of_each_host(
    connection: redis.Redis, model_files: dict[str, Path]
) -> None:
    catalog = models(model_files["tiny"], "a")
    announce(connection, report("one", catalog, 4 * GIB))
    assert run_sync(connection, status(KEYS)).controller is None  # no controller: the raw reports
    controller = Controller(connection=connection, keys=KEYS)
    assert controller.lead()
    demand(connection, "a")
    controller.step(wait=0.01)
    seen = run_sync(connection, status(KEYS))
    assert seen.controller == controller.name
    need = worker_need(catalog[0]).ram
    assert [(h.host, h.placed, h.free_bytes) for h in seen.hosts] == [("one", {"a": need}, 4 * GIB - need)]


def test_hosts_are_not_buried_on_a_promoted_server_until_it_settles(
    connection: redis.Redis,
    two_hosts: tuple[Controller, list[ModelInfo]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A failover redis-py's retries hid: the next step reads another server, with the data
    # replicated but host two's heartbeat expired during the election.
    import redis_proc

    monkeypatch.setattr("hostler.worker.outage.SETTLE_S", 0.5)
    controller, _catalog = two_hosts
    demand(connection, "a")
    controller.step(wait=0.01)
    assert placed(connection) == {"a": ["two"]}
    with redis_proc.redis_server(tmp_path / "promoted") as port:
        promoted = redis.Redis(port=port)
        for key in connection.scan_iter():
            ttl = max(int(connection.pttl(key)), 0)
            promoted.restore(key, ttl, connection.dump(key), replace=True)
        promoted.delete(KEYS.host("two"))
        time.sleep(0.6)  # the promoted server has been up longer than a settle period
        controller.connection = promoted
        controller.step(wait=0.01)
        assert "two" in placed(promoted)["a"], "buried before the hosts could heartbeat again"
        time.sleep(0.6)
        controller.step(wait=0.01)
        assert "two" not in placed(promoted).get("a", [])
        promoted.close()
