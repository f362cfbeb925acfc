"""Prometheus metrics, kept in Redis so every process (API, prefork workers on many hosts, beat) adds to one set.

prometheus-client's multiprocess mode shares a directory, so it only works on one host; the workers of
this system run wherever Celery puts them. Each process therefore adds to a Redis hash
(``lessons:<instance>:metrics``), and the API's ``/metrics`` exports it through a collector. The
``livelessons_active`` gauge is read from the store at scrape time, so it is never stale.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import redis
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["BUCKETS", "Metrics", "RedisCollector"]

log = structlog.get_logger(__name__)

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, math.inf)

COUNTERS = {
    "lessons_requested_total": ("Live lessons requested (new ones only).", ()),
    "lessons_ready_total": ("Live lessons that became ready.", ()),
    "lessons_failed_total": ("Live lessons that failed, by the step that failed.", ("step",)),
    "gc_collected_total": ("Live lessons collected by GC, by reason.", ("reason",)),
    "pings_sent_total": ("Connectivity pings sent (every try and every burst probe).", ()),
    "pings_received_total": ("Connectivity ping replies received; 1 - received/sent is the loss.", ()),
}
HISTOGRAMS = {
    "lesson_step_seconds": ("Time each provisioning step took, by step.", ("step",)),
    "lesson_request_to_ready_seconds": ("Time from request to ready.", ()),
}


def _field(name: str, labels: Mapping[str, str]) -> str:
    return name + "|" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _parse(field: str) -> tuple[str, dict[str, str]]:
    name, _, rest = field.partition("|")
    labels = dict(part.split("=", 1) for part in rest.split(",") if part)
    return name, labels


class Metrics:
    """Writes. A metric must never break the work it measures, so Redis errors are logged, not raised."""

    def __init__(self, client: redis.Redis[str], instance: str) -> None:
        self.r = client
        self.key = f"lessons:{instance}:metrics"

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        try:
            self.r.hincrbyfloat(self.key, _field(name, labels), amount)
        except redis.RedisError as exc:
            log.warning("metric not recorded", metric=name, error=str(exc))

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        try:
            pipe = self.r.pipeline(transaction=False)
            for bound in BUCKETS:
                if seconds <= bound:
                    pipe.hincrby(self.key, _field(f"{name}_bucket", {**labels, "le": str(bound)}), 1)
            pipe.hincrby(self.key, _field(f"{name}_count", labels), 1)
            pipe.hincrbyfloat(self.key, _field(f"{name}_sum", labels), seconds)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("metric not recorded", metric=name, error=str(exc))


class RedisCollector(Collector):
    def __init__(self, client: redis.Redis[str], instance: str, active: object) -> None:
        self.r = client
        self.key = f"lessons:{instance}:metrics"
        self.active = active  # callable returning {status: count}

    def collect(self) -> Iterator[Metric]:
        raw: dict[str, str] = self.r.hgetall(self.key)
        values = [(*_parse(f), float(v)) for f, v in raw.items()]
        for name, (doc, label_names) in COUNTERS.items():
            family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=list(label_names))
            for metric, labels, value in values:
                if metric == name:
                    family.add_metric([labels.get(n, "") for n in label_names], value)
            if not label_names and not any(m == name for m, _, _ in values):
                family.add_metric([], 0.0)
            yield family
        for name, (doc, label_names) in HISTOGRAMS.items():
            histogram = HistogramMetricFamily(name, doc, labels=list(label_names))
            series: dict[tuple[str, ...], dict[str, float]] = {}
            for metric, labels, value in values:
                if metric.startswith(name + "_"):
                    key = tuple(labels.get(n, "") for n in label_names)
                    suffix = metric[len(name) + 1 :]
                    slot = labels.get("le", "") if suffix == "bucket" else suffix
                    series.setdefault(key, {})[slot] = value
            for key, slots in sorted(series.items()):
                buckets = [("+Inf" if b == math.inf else str(b), slots.get(str(b), 0.0)) for b in BUCKETS]
                histogram.add_metric(list(key), buckets, slots.get("sum", 0.0))
            yield histogram
        gauge = GaugeMetricFamily("livelessons_active", "Live lessons by status (not yet deleted).", labels=["status"])
        counts = self.active()  # type: ignore[operator]
        for status, count in sorted(counts.items()):
            gauge.add_metric([status], count)
        yield gauge
