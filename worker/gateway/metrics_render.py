"""GET /metrics: the cluster's numbers from Redis in Prometheus' text format.

Nothing is counted in the gateway: job counters and histograms are the hashes workers
write as jobs end (`worker/metrics.py`), queue lengths, jobs in flight and memory come
from the queues and the host and worker heartbeats. So every gateway in front of one
Redis serves the same numbers, and a restarted gateway loses none.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from hostler.schemas import Status
from hostler.worker.serving.metrics import BUCKETS, OUTCOMES, bound_label
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

HISTOGRAM_NAMES = {
    "ttft": ("hostler_time_to_first_token_seconds", "From a worker starting a generation to its first piece."),
    "duration": ("hostler_job_duration_seconds", "From a worker starting a job to its end."),
}
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class Snapshot:
    """What one scrape read: the cluster status, every model's metrics hash, its running jobs."""

    status: Status
    models: dict[str, dict[str, str]]
    in_flight: dict[str, int]


def _number(raw: str | None) -> float:
    try:
        return float(raw) if raw is not None else 0.0
    except ValueError:
        return 0.0


def _job_metrics(models: dict[str, dict[str, str]]) -> Iterator[Metric]:
    jobs = CounterMetricFamily("hostler_jobs", "Jobs that ended, by outcome.", labels=["model", "outcome"])
    reasons = CounterMetricFamily(
        "hostler_job_errors", "Failed and canceled jobs by reason code.", labels=["model", "code"]
    )
    prompt = CounterMetricFamily("hostler_prompt_tokens", "Prompt tokens of finished generations.", labels=["model"])
    generated = CounterMetricFamily("hostler_completion_tokens", "Tokens generated.", labels=["model"])
    for model, fields in sorted(models.items()):
        for outcome in OUTCOMES:
            jobs.add_metric([model, outcome], _number(fields.get(f"jobs:{outcome}")))
        for field, value in sorted(fields.items()):
            if field.startswith("code:"):
                reasons.add_metric([model, field.removeprefix("code:")], _number(value))
        prompt.add_metric([model], _number(fields.get("tokens:prompt")))
        generated.add_metric([model], _number(fields.get("tokens:completion")))
    yield from (jobs, reasons, prompt, generated)
    for histogram, (name, help_text) in HISTOGRAM_NAMES.items():
        family = HistogramMetricFamily(name, help_text, labels=["model", "kind"])
        for model, fields in sorted(models.items()):
            for kind in sorted(_kinds(fields, histogram)):
                total = _number(fields.get(f"{histogram}:{kind}:sum"))
                family.add_metric([model, kind], _cumulative(fields, histogram, kind), sum_value=total)
        yield family


def _kinds(fields: dict[str, str], histogram: str) -> set[str]:
    return {f.split(":")[1] for f in fields if f.startswith(f"{histogram}:") and f.count(":") == 2}


def _cumulative(fields: dict[str, str], histogram: str, kind: str) -> list[tuple[str, float]]:
    """Prometheus buckets count everything at or below their bound; the hash counts per bucket."""
    running = 0.0
    buckets = []
    for bound in (*BUCKETS[histogram], float("inf")):
        label = bound_label(bound)
        running += _number(fields.get(f"{histogram}:{kind}:{label}"))
        buckets.append((label, running))
    return buckets


def _queue_metrics(status: Status, running: dict[str, int]) -> Iterator[Metric]:
    queued = GaugeMetricFamily("hostler_queue_length", "Jobs waiting, both priority classes.", labels=["model"])
    for model, length in sorted(status.queues.items()):
        queued.add_metric([model], length)
    in_flight = GaugeMetricFamily("hostler_jobs_in_flight", "Jobs a worker is running now.", labels=["model"])
    workers = GaugeMetricFamily("hostler_workers", "Live workers.", labels=["model", "state"])
    rss = GaugeMetricFamily("hostler_worker_rss_bytes", "Resident memory of a worker.", labels=["model", "host", "pid"])
    cpu = GaugeMetricFamily("hostler_worker_cpu_percent", "CPU use of a worker.", labels=["model", "host", "pid"])
    states: dict[tuple[str, str], int] = {}
    for worker in status.workers:
        states[(worker.model, worker.state)] = states.get((worker.model, worker.state), 0) + 1
        rss.add_metric([worker.model, worker.host, str(worker.pid)], worker.rss_bytes)
        cpu.add_metric([worker.model, worker.host, str(worker.pid)], worker.cpu_percent)
    for model, count in sorted(running.items()):
        in_flight.add_metric([model], count)
    for (model, state), count in sorted(states.items()):
        workers.add_metric([model, state], count)
    yield from (queued, in_flight, workers, rss, cpu)


def _host_metrics(status: Status) -> Iterator[Metric]:
    ram_total = GaugeMetricFamily("hostler_host_ram_total_bytes", "RAM of a host.", labels=["host"])
    ram_free = GaugeMetricFamily("hostler_host_ram_available_bytes", "RAM available on a host.", labels=["host"])
    placeable = GaugeMetricFamily(
        "hostler_host_free_bytes", "Memory the controller can still place models in.", labels=["host"]
    )
    vram_total = GaugeMetricFamily("hostler_host_vram_total_bytes", "Memory of a GPU.", labels=["host", "gpu"])
    vram_free = GaugeMetricFamily("hostler_host_vram_free_bytes", "Free memory of a GPU.", labels=["host", "gpu"])
    for host in status.hosts:
        ram_total.add_metric([host.host], host.ram_total_bytes)
        ram_free.add_metric([host.host], host.ram_available_bytes)
        placeable.add_metric([host.host], host.free_bytes)
        for gpu in host.gpus:
            vram_total.add_metric([host.host, str(gpu.index)], gpu.total_bytes)
            vram_free.add_metric([host.host, str(gpu.index)], gpu.free_bytes)
    yield from (ram_total, ram_free, placeable, vram_total, vram_free)


class _SnapshotCollector:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        yield from _queue_metrics(self.snapshot.status, self.snapshot.in_flight)
        yield from _job_metrics(self.snapshot.models)
        yield from _host_metrics(self.snapshot.status)


def render(snapshot: Snapshot) -> bytes:
    """The Prometheus text exposition of one snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)
