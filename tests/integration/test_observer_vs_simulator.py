"""The PrometheusObserver reads back what the simulator served, through a real Prometheus.

The simulator runs in real time (1 simulated s per wall s) and every step is published as
Istio-shaped series (`publish_step`); a real Prometheus scrapes them every second. Cases: per
subset rps, 5xx ratio and slow ratio from PromQL match the simulator's own window within
sampling and alignment error; p99 lands in (or next to) the Istio bucket holding the true p99,
and the newest interval's p99 (`recent_p99_ms`, one 1 s step) within two buckets of the
simulator's last step (Prometheus's last scrape interval and the last step may be one step
apart).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import pytest

from controller.adapters.prometheus import PrometheusObserver
from envs.simulator.engine import MeshSimulator
from envs.simulator.exporter import IstioSeriesExporter, publish_step
from envs.simulator.scenario import parse_scenario
from meshcore import Observation, RouteRef, Weights
from meshcore.telemetry_format import ISTIO_BUCKETS_MS

from .prometheus_lab import PrometheusLab

pytestmark = pytest.mark.integration

WINDOW_S = 10
ROUTE = RouteRef("lirmm-services", "reviews", "primary", "reviews.lirmm-services.svc.cluster.local")
SCENARIO = parse_scenario(
    {
        "name": "observer-truth",
        "duration_s": 600,
        "step_s": 1,
        "slo_ms": 250,
        "load": {"rps": 150},
        "subsets": [
            {"name": "v1", "replicas": 2, "service_ms": 15},
            {"name": "v2", "replicas": 1, "service_ms": 15, "error_rate": 0.05},
        ],
        "telemetry": {"window_s": WINDOW_S, "scrape_s": 1},
    }
)


class RealtimeFeeder(threading.Thread):
    """Steps the simulator once per wall second and publishes each step."""

    def __init__(self, sim: MeshSimulator, exporter: IstioSeriesExporter) -> None:
        super().__init__(daemon=True)
        self.sim, self.exporter = sim, exporter
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        weights = Weights(["v1", "v2"], [70, 30])
        next_s = time.monotonic()
        while not self.stopped.is_set():
            with self.lock:
                counts = self.sim.step(weights)
                publish_step(
                    exporter=self.exporter, route=ROUTE, subsets=self.sim.subsets, counts=counts
                )
            next_s += 1.0
            self.stopped.wait(max(0.0, next_s - time.monotonic()))

    def truth(self) -> Observation:
        with self.lock:
            return self.sim.observe()


@pytest.fixture(scope="module")
def observed(prometheus_bin: str) -> Iterator[tuple[Observation, Observation]]:
    exporter = IstioSeriesExporter()
    port = exporter.start()
    feeder = RealtimeFeeder(MeshSimulator(SCENARIO, seed=5), exporter)
    feeder.start()
    prometheus = PrometheusLab([f"127.0.0.1:{port}"], binary=prometheus_bin)
    try:
        prometheus.start()
        prometheus.wait_for_sample(
            f'count_over_time(up{{job="{prometheus.job}"}}[{WINDOW_S}s]) >= {WINDOW_S}'
        )
        time.sleep(WINDOW_S / 2)
        observer = PrometheusObserver(
            url=prometheus.url, window_s=WINDOW_S, subsets_by_route={ROUTE: ("v1", "v2")}
        )
        seen = observer.observe([ROUTE])[ROUTE]
        yield seen, feeder.truth()
    finally:
        feeder.stopped.set()
        feeder.join(timeout=5)
        prometheus.close()
        exporter.stop()


def _bucket(ms: float) -> int:
    return next((i for i, b in enumerate(ISTIO_BUCKETS_MS) if ms <= b), len(ISTIO_BUCKETS_MS))


def test_rps_matches_the_simulator(observed: tuple[Observation, Observation]) -> None:
    seen, truth = observed
    for subset in ("v1", "v2"):
        assert seen.stat(subset).rps == pytest.approx(truth.stat(subset).rps, rel=0.2)
    assert seen.stat("v1").rps / seen.total_rps == pytest.approx(0.7, abs=0.05)


def test_error_and_slow_ratios_match_the_simulator(
    observed: tuple[Observation, Observation],
) -> None:
    seen, truth = observed
    assert seen.stat("v2").error_ratio == pytest.approx(truth.stat("v2").error_ratio, abs=0.03)
    assert seen.stat("v1").error_ratio == pytest.approx(truth.stat("v1").error_ratio, abs=0.01)
    for subset in ("v1", "v2"):
        assert math.isfinite(seen.stat(subset).slow_ratio)
        assert seen.stat(subset).slow_ratio == pytest.approx(
            truth.stat(subset).slow_ratio, abs=0.05
        )


def test_p99_lands_in_the_true_bucket(observed: tuple[Observation, Observation]) -> None:
    seen, truth = observed
    for subset in ("v1", "v2"):
        assert abs(_bucket(seen.stat(subset).p99_ms) - _bucket(truth.stat(subset).p99_ms)) <= 1


def test_recent_p99_is_the_newest_step(observed: tuple[Observation, Observation]) -> None:
    seen, truth = observed
    for subset in ("v1", "v2"):
        got, want = seen.stat(subset).recent_p99_ms, truth.stat(subset).recent_p99_ms
        assert math.isfinite(got) and math.isfinite(want)
        assert abs(_bucket(got) - _bucket(want)) <= 2
