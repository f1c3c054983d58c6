"""Publish simulated or replayed traffic as Istio-shaped Prometheus series on a loopback port.

Why: the observer's PromQL must run unchanged against a real Prometheus in the lab and in the
integration tests, without an Istio mesh. Anything that knows how many requests a subset served
in an interval (the simulator, a replay, a test) calls `IstioSeriesExporter.record` with
per-interval counts; the exporter keeps cumulative counters, as Envoy does, and a real Prometheus
scrapes them.

Series (labels as the Istio sidecar reports them, minus the ones meshpilot never reads):

* ``istio_requests_total{reporter, destination_service, destination_version, response_code}``
  with ``response_code`` ``"200"`` (successes) or ``"503"`` (5xx). A code's series appears only
  after its first request, as in Istio.
* ``istio_request_duration_milliseconds{reporter, destination_service, destination_version}``:
  a histogram over `ISTIO_BUCKETS_MS` (``le`` printed as Envoy prints it, e.g. ``"250"``),
  ``_sum`` in ms and ``_count`` equal to the request count. Istio also splits the histogram by
  ``response_code``; callers here give one latency histogram for all codes, so it is not split.

Counters live in a custom collector (not ``prometheus_client.Histogram``) so a whole interval's
bucket counts are added in one call, under one lock, and a scrape never sees half an interval.
Each exporter has its own ``CollectorRegistry``, so several can run in one process.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from envs.simulator.engine import StepCounts
from meshcore.model import RouteRef
from meshcore.telemetry_format import ISTIO_BUCKETS_MS, le_label

__all__ = ["IstioSeriesExporter", "publish_step"]

_OK_CODE = "200"
_ERROR_CODE = "503"
_LE_LABELS: tuple[str, ...] = (*(le_label(b) for b in ISTIO_BUCKETS_MS), "+Inf")


@dataclass
class _SubsetCounters:
    """Cumulative counts of one (service, version) since the exporter started."""

    ok: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(ISTIO_BUCKETS_MS) + 1))
    sum_ms: float = 0.0


class _IstioCollector:
    """Thread-safe cumulative store, rendered as metric families on every scrape."""

    def __init__(self, reporter: str) -> None:
        self._reporter = reporter
        self._lock = threading.Lock()
        self._subsets: dict[tuple[str, str], _SubsetCounters] = {}

    def add(
        self,
        service: str,
        version: str,
        requests: int,
        errors_5xx: int,
        bucket_counts: Sequence[int],
        sum_ms: float,
    ) -> None:
        with self._lock:
            c = self._subsets.setdefault((service, version), _SubsetCounters())
            c.ok += requests - errors_5xx
            c.errors += errors_5xx
            for i, n in enumerate(bucket_counts):
                c.buckets[i] += n
            c.sum_ms += sum_ms

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = {
                key: _SubsetCounters(c.ok, c.errors, list(c.buckets), c.sum_ms)
                for key, c in sorted(self._subsets.items())
            }
        labels = ["reporter", "destination_service", "destination_version"]
        requests = CounterMetricFamily(
            "istio_requests",
            "Requests served, by response code.",
            labels=[*labels, "response_code"],
        )
        duration = HistogramMetricFamily(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds.",
            labels=labels,
        )
        for (service, version), c in snapshot.items():
            values = [self._reporter, service, version]
            if c.ok:
                requests.add_metric([*values, _OK_CODE], c.ok)
            if c.errors:
                requests.add_metric([*values, _ERROR_CODE], c.errors)
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for le, n in zip(_LE_LABELS, c.buckets, strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            if cumulative:
                duration.add_metric(values, buckets, c.sum_ms)
        yield requests
        yield duration


class IstioSeriesExporter:
    """Istio-shaped request counters and duration histograms on ``http://127.0.0.1:<port>/``.

    reporter: the ``reporter`` label value (``destination`` is what `PROFILES["istio"]` reads by
    default); host: the address to listen on (loopback by default, so nothing leaks).
    """

    def __init__(self, *, reporter: str = "destination", host: str = "127.0.0.1") -> None:
        self._host = host
        self._collector = _IstioCollector(reporter)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._collector)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def record(
        self,
        *,
        service: str,
        version: str,
        requests: int,
        errors_5xx: int,
        latency_bucket_counts: Sequence[int],
        sum_ms: float,
    ) -> None:
        """Add one interval of traffic of one subset.

        service: ``destination_service`` (the host FQDN); version: ``destination_version`` (the
        subset); requests: requests served in the interval, errors included; errors_5xx: how
        many of them answered 5xx; latency_bucket_counts: *non-cumulative* counts per bucket of
        `ISTIO_BUCKETS_MS` followed by one overflow count (``len(ISTIO_BUCKETS_MS) + 1``
        values, summing to `requests`); sum_ms: total duration of those requests (ms).
        """
        if not service or not version:
            raise ValueError("service and version must be non-empty")
        if requests < 0 or errors_5xx < 0 or errors_5xx > requests:
            raise ValueError(
                f"need 0 <= errors_5xx <= requests, got requests={requests} errors={errors_5xx}"
            )
        counts = [int(n) for n in latency_bucket_counts]
        if len(counts) != len(ISTIO_BUCKETS_MS) + 1:
            raise ValueError(
                f"latency_bucket_counts needs {len(ISTIO_BUCKETS_MS) + 1} values "
                f"({len(ISTIO_BUCKETS_MS)} buckets + overflow), got {len(counts)}"
            )
        if any(n < 0 for n in counts) or sum(counts) != requests:
            raise ValueError(
                f"latency_bucket_counts must be non-negative and sum to requests={requests}, "
                f"got sum {sum(counts)}"
            )
        if not (math.isfinite(sum_ms) and sum_ms >= 0):
            raise ValueError(f"sum_ms must be a finite non-negative number of ms, got {sum_ms}")
        self._collector.add(service, version, requests, errors_5xx, counts, sum_ms)

    def start(self, port: int = 0) -> int:
        """Serve ``/metrics`` (any path works) on `port` (0 = a free one); returns the port."""
        if self._server is not None:
            raise RuntimeError("exporter already started")
        server, thread = start_http_server(port, addr=self._host, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_port)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("exporter not started")
        return int(self._server.server_port)

    def stop(self) -> None:
        """Stop serving (idempotent); the counters are kept, so `start` resumes them."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)


def publish_step(
    *, exporter: IstioSeriesExporter, route: RouteRef, subsets: tuple[str, ...], counts: StepCounts
) -> None:
    """Add one simulated step of `route` (per-subset counts ordered like `subsets`)."""
    for i, subset in enumerate(subsets):
        buckets = counts.istio_buckets(i)
        exporter.record(
            service=route.host,
            version=subset,
            requests=int(counts.count[i]),
            errors_5xx=int(counts.errors[i]),
            latency_bucket_counts=[int(n) for n in np.asarray(buckets)],
            sum_ms=float(counts.lat_sum_ms[i]),
        )
