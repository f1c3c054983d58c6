"""Publish simulated traffic as Istio-shaped Prometheus series.

This is what lets the real `PrometheusObserver` (and a real Prometheus, Grafana or Kiali)
watch the simulator: each simulated step's ground truth becomes the increments of
``istio_requests_total`` and ``istio_request_duration_milliseconds`` that Envoy sidecars
would have reported for the route's host and subsets.
"""

from __future__ import annotations

import numpy as np

from controller.adapters.istio_exporter import IstioSeriesExporter
from controller.core.model import RouteRef
from envs.simulator.engine import StepCounts


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
