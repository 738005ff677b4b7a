"""A host's report as two keys on a real Redis: the state every heartbeat, the catalog when it
changed; and the controller's snapshot reading a catalog only when the state names a new one."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from hostler.client._steps import run_sync
from hostler.schemas import Assignment, GpuInfo, HardwareReport, HostReport, Keys, ModelInfo
from hostler.worker.control.controller import Controller
from hostler.worker.control.host_report import CATALOG_TTL_S, write_report
from hostler.worker.control.snapshot import ReportCache, read_snapshot

GIB = 1024**3
KEYS = Keys()


def info(model: str, host: str = "h") -> ModelInfo:
    return ModelInfo(
        id=model, engine="llama", path=f"/m/{model}.gguf", size_bytes=GIB, host=host, chat_template=True,
        estimate_bytes=GIB,
    )  # fmt: skip


def report(models: list[str], ram_available: int = 4 * GIB, host: str = "h") -> HostReport:
    gpus = [GpuInfo(index=0, name="L4", total_bytes=24 * GIB, free_bytes=ram_available // 2)]
    hardware = HardwareReport(
        os="Linux", arch="x86_64", cpu_model="cpu", cores_logical=8, ram_total_bytes=8 * GIB,
        ram_available_bytes=ram_available, gpus=gpus, engines={"llama": None},
    )  # fmt: skip
    return HostReport(
        host=host, pid=1, models_dir="/m", models=[info(m, host) for m in models], ram_total_bytes=8 * GIB,
        ram_available_bytes=ram_available, gpus=gpus, hardware=hardware, updated_at=time.time(),
    )  # fmt: skip


def write(conn: redis.Redis, written: HostReport, digest: str | None = None) -> str:
    return run_sync(conn, write_report(KEYS, written, digest))


def count_catalog_reads(conn: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The catalog keys the snapshot reads from now on (it reads them with a plain MGET)."""
    read: list[str] = []
    mget = conn.mget

    def counting(keys: Any, *args: Any) -> Any:
        read.extend(k for k in keys if k.startswith(KEYS.host_catalog("")))
        return mget(keys, *args)

    monkeypatch.setattr(conn, "mget", counting)
    return read


def test_a_host_report_read_back_is_the_report_written(connection: redis.Redis) -> None:
    written = report(["a", "b"])
    write(connection, written)
    snap = read_snapshot(connection, KEYS)
    assert snap.reports["h"] == written
    assert connection.ttl(KEYS.host_catalog("h")) > connection.ttl(KEYS.host("h")) > 0


def test_a_new_state_with_the_same_catalog_reads_and_parses_no_catalog(
    connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ReportCache()
    digest = write(connection, report(["a", "b"]))
    first = read_snapshot(connection, KEYS, cache).reports["h"]
    read = count_catalog_reads(connection, monkeypatch)

    assert write(connection, report(["a", "b"], ram_available=3 * GIB), digest) == digest
    second = read_snapshot(connection, KEYS, cache).reports["h"]
    assert second.ram_available_bytes == 3 * GIB and second.updated_at > first.updated_at
    assert second.hardware is not None and second.hardware.ram_available_bytes == 3 * GIB
    assert second.gpus[0].free_bytes == second.hardware.gpus[0].free_bytes == 3 * GIB // 2
    assert read == []
    # Not parsed again either: the very objects of the first read.
    assert all(new is old for new, old in zip(second.models, first.models, strict=True))

    write(connection, report(["a", "b", "c"], ram_available=3 * GIB), digest)
    third = read_snapshot(connection, KEYS, cache)
    assert [m.id for m in third.reports["h"].models] == ["a", "b", "c"]
    assert "c" in third.models()
    assert read == [KEYS.host_catalog("h")]


def test_a_host_whose_catalog_is_missing_sits_the_step_out_and_is_not_buried(connection: redis.Redis) -> None:
    write(connection, report(["a"]))
    placed = Assignment(model="a", host="h", estimate_bytes=GIB, placed_at=time.time(), reason="test")
    connection.hset(KEYS.assignments("h"), "a", placed.model_dump_json())
    cache = ReportCache()
    assert read_snapshot(connection, KEYS, cache).reports["h"].models[0].id == "a"

    # A new catalog whose key is gone: the one held still serves, with the new state's figures.
    write(connection, report(["a", "b"], ram_available=2 * GIB))
    connection.delete(KEYS.host_catalog("h"))
    snap = read_snapshot(connection, KEYS, cache)
    assert [m.id for m in snap.reports["h"].models] == ["a"]
    assert snap.reports["h"].ram_available_bytes == 2 * GIB

    # Nothing held (a controller that just took over): neither alive nor dead.
    snap = read_snapshot(connection, KEYS, ReportCache())
    assert "h" not in snap.reports and "h" not in snap.dead and "h" not in snap.assignments
    controller = Controller(connection=connection, keys=KEYS)
    controller.step(wait=0.01)
    assert connection.sismember(KEYS.hosts, "h")
    assert connection.hexists(KEYS.assignments("h"), "a")

    # Its state expired as well: now it is dead.
    connection.delete(KEYS.host("h"))
    assert read_snapshot(connection, KEYS, ReportCache()).dead == ["h"]


def test_the_writer_renews_an_unchanged_catalog_and_rewrites_one_that_vanished(connection: redis.Redis) -> None:
    written = report(["a"])
    digest = write(connection, written)
    catalog = connection.get(KEYS.host_catalog("h"))
    assert catalog is not None

    # Unchanged: renewed, not written again (a stand-in value and a short TTL tell which).
    connection.set(KEYS.host_catalog("h"), b"stand-in", ex=1)
    assert write(connection, written, digest) == digest
    assert connection.get(KEYS.host_catalog("h")) == b"stand-in"
    assert connection.ttl(KEYS.host_catalog("h")) > 1

    # Gone (a failover, a flush): written again by the same report.
    connection.delete(KEYS.host_catalog("h"))
    assert write(connection, written, digest) == digest
    assert connection.get(KEYS.host_catalog("h")) == catalog
    assert 0 < connection.ttl(KEYS.host_catalog("h")) <= CATALOG_TTL_S
    assert read_snapshot(connection, KEYS).reports["h"] == written


def test_the_model_index_is_made_again_only_when_a_catalog_or_the_hosts_change(connection: redis.Redis) -> None:
    cache = ReportCache()
    digest = write(connection, report(["a", "b"]))
    first = read_snapshot(connection, KEYS, cache)
    write(connection, report(["a", "b"], ram_available=3 * GIB), digest)
    second = read_snapshot(connection, KEYS, cache)
    # A new state alone: the ten thousand models of a big cluster are not walked again.
    assert second.infos is first.infos and second.models() == {"a", "b"}

    write(connection, report(["a", "b", "c"]), digest)
    third = read_snapshot(connection, KEYS, cache)
    assert third.infos is not second.infos and third.models() == {"a", "b", "c"}
    write(connection, report(["d"], host="g"))
    fourth = read_snapshot(connection, KEYS, cache)
    assert fourth.infos is not third.infos and fourth.models() == {"a", "b", "c", "d"}
    found = fourth.info("d")
    assert found is not None and found.host == "g"
