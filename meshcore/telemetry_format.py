"""What Istio's telemetry looks like, shared by the simulator and the Prometheus adapter."""

from __future__ import annotations

ISTIO_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
    600000, 1800000, 3600000,
)  # fmt: skip
"""Upper bounds (ms) of ``istio_request_duration_milliseconds`` buckets: Envoy's default histogram
buckets (``source/common/stats/histogram_impl.cc``), which Istio's sidecars use unless
``stats_config.histogram_bucket_settings`` overrides them; ``+Inf`` follows implicitly."""


def le_label(bound_ms: float) -> str:
    """A bucket bound as Envoy/Istio print it in ``le``: ``0.5``, ``250``, ``3600000``."""
    value = float(bound_ms)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
