"""What the clients read from Redis, written once as sans-I/O generators.

Each reader yields a batch of Redis commands, gets their replies back (one pipelined round
trip per batch) and finally returns its value; `_steps.run_sync` and `_steps.run_async` drive
the same reader over a sync or an asyncio connection (see _steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hostler.schemas import (
    RESULT_ADAPTER,
    Assignment,
    HostCatalog,
    HostReport,
    HostState,
    HostStatus,
    Keys,
    ModelInfo,
    Status,
    WorkerReport,
    WorkerStatus,
    as_text,
    free_memory,
    join_report,
)
from rq.job import JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from ._outcome import JobOutcome, decode_failure, queue_keys
from ._steps import Reads as Reads
from ._steps import run_async as run_async
from ._steps import run_sync as run_sync

_ENDED_AS_FAILURE = {JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value}


# -- jobs ---------------------------------------------------------------------------


def job_key(job_id: str) -> str:
    return f"rq:job:{job_id}"


def job_status(job_id: str) -> Reads[str]:
    """queued, started, finished, failed or canceled; 'missing' once its record expired."""
    (status,) = yield [("HGET", job_key(job_id), "status")]
    return as_text(status) if status is not None else "missing"


def job_origin(job_id: str) -> Reads[str | None]:
    """The rq queue a job was put on, or None when there is no such job."""
    (origin,) = yield [("HGET", job_key(job_id), "origin")]
    return as_text(origin) if origin is not None else None


def job_outcome(job_id: str) -> Reads[JobOutcome | None]:
    """The stored end of a job, or None while it is still queued or running."""
    status_raw, latest = yield [
        ("HGET", job_key(job_id), "status"),
        ("XREVRANGE", f"rq:results:{job_id}", "+", "-", "COUNT", "1"),
    ]
    if status_raw is None:
        return JobOutcome(status="missing", code="job_missing", message=f"job {job_id} no longer exists")
    status = as_text(status_raw)
    result = _latest_result(job_id, latest)
    if status == JobStatus.FINISHED.value:
        if result is None or result.return_value is None:
            return JobOutcome(status=status, code="internal", message="finished without a stored result")
        return JobOutcome(status=status, result=RESULT_ADAPTER.validate_python(result.return_value))
    if status in _ENDED_AS_FAILURE:
        if result is None and status == JobStatus.CANCELED.value:
            # Canceled by something other than hostler (rq's own cancel).
            return JobOutcome(status=status, code="canceled", message="the job was canceled")
        code, message = decode_failure(result.exc_string if result is not None else None)
        return JobOutcome(status=status, code=code, message=message)
    return None


def _latest_result(job_id: str, entries: list[Any]) -> Result | None:
    if not entries:
        return None
    result_id, payload = entries[0]
    # rq's own decoding of its result stream entry; the connection is only stored, not used.
    restored: Result = Result.restore(job_id, as_text(result_id), payload, connection=None, serializer=JSONSerializer)  # type: ignore[arg-type]
    return restored


# -- the cluster --------------------------------------------------------------------


def queue_length(keys: Keys, model: str) -> Reads[int]:
    """Jobs waiting for the model, both priority classes together."""
    lengths = yield [("LLEN", key) for key in queue_keys(keys, model)]
    return sum(int(n) for n in lengths)


def worker_reports(keys: Keys) -> Reads[list[WorkerReport]]:
    blobs = yield from _live_reports(keys.workers, keys.worker, prune=True)
    return [WorkerReport.model_validate_json(b) for b in blobs]


def host_states(keys: Keys) -> Reads[list[HostState]]:
    # An expired state is a host that is gone.
    blobs = yield from _live_reports(keys.hosts, keys.host, prune=False)
    return [HostState.model_validate_json(b) for b in blobs]


def host_reports(keys: Keys) -> Reads[list[HostReport]]:
    """Each live host's state joined with its catalog; a host whose catalog is not there (its
    agent is writing it again) is left out, as a host whose report had not come yet."""
    states = yield from host_states(keys)
    if not states:
        return []
    (blobs,) = yield [("MGET", *[keys.host_catalog(s.host) for s in states])]
    return [
        join_report(state, HostCatalog.model_validate_json(blob))
        for state, blob in zip(states, blobs, strict=True)
        if blob is not None
    ]


def _live_reports(members: str, key_of: Callable[[str], str], *, prune: bool) -> Reads[list[bytes]]:
    """The reports of a set's members that have not expired; prune: drop the expired from the set."""
    (names_raw,) = yield [("SMEMBERS", members)]
    names = sorted(as_text(m) for m in names_raw)
    if not names:
        return []
    (blobs,) = yield [("MGET", *[key_of(n) for n in names])]
    gone = [n for n, blob in zip(names, blobs, strict=True) if blob is None]
    if gone and prune:
        yield [("SREM", members, *gone)]
    return [b for b in blobs if b is not None]


def catalog(keys: Keys) -> Reads[dict[str, list[ModelInfo]]]:
    """Every model id on the disk of a live host, with each host's copy of it."""
    found: dict[str, list[ModelInfo]] = {}
    for report in (yield from host_reports(keys)):
        for info in report.models:
            found.setdefault(info.id, []).append(info)
    return found


def host_statuses(keys: Keys) -> Reads[tuple[str | None, list[HostStatus]]]:
    """The leading controller and its view of the hosts, or, with no controller running, the
    raw reports (and no leader)."""
    leader, view = yield [("GET", keys.controller), ("HGETALL", keys.view)]
    if view:
        hosts = [HostStatus.model_validate_json(view[host]) for host in sorted(view)]
        return (as_text(leader) if leader is not None else None), hosts
    reports = yield from host_reports(keys)
    return None, [
        HostStatus.of(
            r,
            free_bytes=free_memory(r.capacity_bytes, r.ram_available_bytes, sum(w.rss_bytes for w in r.workers)),
            placed={w.model: w.rss_bytes for w in r.workers},
        )
        for r in reports
    ]


def models(keys: Keys) -> Reads[tuple[list[ModelInfo], dict[str, list[ModelInfo]]]]:
    """Every model on the disk of a live host: engine, size, memory estimate, loaded state,
    and the hosts with room for it now; plus the catalog it was built from."""
    loaded = {(report.host, report.model) for report in (yield from worker_reports(keys)) if report.loaded}
    found = yield from catalog(keys)
    _, hosts = yield from host_statuses(keys)
    listing = [
        info.model_copy(
            update={
                "loaded": (info.host, info.id) in loaded,
                "fits_on": [
                    h.host
                    for h in hosts
                    if info.available
                    and info.estimate_bytes is not None
                    and info.id in h.models_on_disk
                    and (info.id in h.placed or h.free_bytes >= info.estimate_bytes)
                ],
            }
        )
        for model_id in sorted(found)
        for info in found[model_id]
    ]
    return listing, found


def status(keys: Keys) -> Reads[Status]:
    """Hosts (RAM, VRAM, what is placed and free), placements, workers and queue lengths."""
    leader, hosts = yield from host_statuses(keys)
    reports = yield from worker_reports(keys)
    models_seen = sorted({m for h in hosts for m in h.models_on_disk} | {r.model for r in reports})
    replies = yield [
        *[("HGETALL", keys.assignments(host.host)) for host in hosts],
        *[("LLEN", key) for model in models_seen for key in queue_keys(keys, model)],
    ]
    lengths = [int(n) for n in replies[len(hosts) :]]
    waiting = {m: lengths[2 * i] + lengths[2 * i + 1] for i, m in enumerate(models_seen)}
    placements = [Assignment.model_validate_json(blob) for r in replies[: len(hosts)] for blob in r.values()]
    workers = [
        WorkerStatus(
            model=r.model,
            name=r.name,
            host=r.host,
            pid=r.pid,
            state=r.state,
            cpu_percent=r.cpu_percent,
            rss_bytes=r.rss_bytes,
            queue_length=waiting.get(r.model, 0),
            current_job=r.current_job,
            loaded=r.loaded,
            jobs_done=r.jobs_done,
            running_jobs=r.running_jobs,
            slots=r.slots,
            prompt_tokens_received=r.prompt_tokens_received,
            prompt_tokens_evaluated=r.prompt_tokens_evaluated,
        )
        for r in reports
    ]
    return Status(
        controller=leader,
        hosts=hosts,
        placements=sorted(placements, key=lambda a: (a.model, a.host)),
        workers=workers,
        queues=waiting,
    )


# -- batch runs ---------------------------------------------------------------------


def batch_state(keys: Keys, batch_id: str) -> Reads[dict[str, Any]]:
    """A batch run's input and its requests counted by job state."""
    meta, jobs = yield [("HGETALL", keys.batch(batch_id)), ("HGETALL", keys.batch_jobs(batch_id))]
    if not meta:
        return {}
    job_ids = [as_text(j) for j in jobs.values()]
    statuses = (yield [("HGET", job_key(j), "status") for j in job_ids]) if job_ids else []
    counts: dict[str, int] = {}
    for status in statuses:
        name = as_text(status) if status is not None else "expired"
        counts[name] = counts.get(name, 0) + 1
    requests = int(meta.get(b"requests", 0))
    counts["not_submitted"] = requests - len(job_ids)
    return {
        "batch_id": batch_id,
        "input": as_text(meta.get(b"input", b"")),
        "requests": requests,
        "started_at": float(meta.get(b"started_at", 0)),
        "states": counts,
    }
