"""The control loop through a real Prometheus outage, end to end.

A simulated route runs in real time and is published as Istio series; a real Prometheus
scrapes it; the `ControlLoop` observes it with `PrometheusObserver` and writes through the
simulated mesh's actuator. Cases: the loop converges to the policy's split; with Prometheus
killed it keeps ticking (never raises), holds for ``hold_s``, then decays step by step to the
baseline; meanwhile the API stays ready (``/readyz`` 200, ``observing`` false), shows the
outage as a degraded condition of the route and as ``meshpilot_observing 0``, and a pin made
through it is written at the next tick; once Prometheus is back it resumes active control and
moves toward the policy again.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from controller.adapters.prometheus import PrometheusObserver
from controller.api.app import create_app
from controller.clock import WallClock
from controller.guard import Guard, GuardConfig
from controller.loop import ControlLoop
from controller.recording import TickResult
from controller.settings import load_settings
from controller.store import DecisionStore
from envs.simulator.engine import MeshSimulator
from envs.simulator.exporter import IstioSeriesExporter, publish_step
from envs.simulator.mesh import SimulatedMesh
from envs.simulator.scenario import parse_scenario
from meshcore import Observation, RouteRef, Weights

from .prometheus_lab import PrometheusLab

pytestmark = pytest.mark.integration

ROUTE = RouteRef("lirmm-services", "reviews", "primary", "reviews.lirmm-services.svc.cluster.local")
WINDOW_S = 5
SCENARIO = parse_scenario(
    {
        "name": "outage",
        "duration_s": 3600,
        "step_s": 1,
        "load": {"rps": 100},
        "subsets": [
            {"name": "v1", "replicas": 2, "service_ms": 10},
            {"name": "v2", "replicas": 2, "service_ms": 10},
        ],
        "initial_weights": {"v1": 50, "v2": 50},
    }
)


class FixedPolicy:
    """Always proposes 90/10: the loop's convergence target."""

    name = "fixed"

    def decide(self, obs: Observation) -> Weights:
        return Weights(obs.subsets, [90 if s == "v1" else 10 for s in obs.subsets])

    def reset(self) -> None:
        return None


class Feeder(threading.Thread):
    """Steps the simulator once per wall second with the weights last applied, and publishes."""

    def __init__(self, sim: MeshSimulator, exporter: IstioSeriesExporter) -> None:
        super().__init__(daemon=True)
        self.sim, self.exporter = sim, exporter
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            counts = self.sim.step(self.sim.pending)
            publish_step(
                exporter=self.exporter, route=ROUTE, subsets=self.sim.subsets, counts=counts
            )


@pytest.fixture()
def world(
    tmp_path, prometheus_bin: str
) -> Iterator[tuple[ControlLoop, PrometheusLab, MeshSimulator]]:
    exporter = IstioSeriesExporter()
    port = exporter.start()
    sim = MeshSimulator(SCENARIO, seed=1, route=ROUTE)
    feeder = Feeder(sim, exporter)
    feeder.start()
    prometheus = PrometheusLab([f"127.0.0.1:{port}"], binary=prometheus_bin)
    store = DecisionStore(str(tmp_path / "decisions.db"))
    try:
        prometheus.start()
        prometheus.wait_for_sample(
            f'count_over_time(up{{job="{prometheus.job}"}}[{WINDOW_S}s]) >= {WINDOW_S}'
        )
        mesh = SimulatedMesh({ROUTE: sim})
        loop = ControlLoop(
            observer=PrometheusObserver(
                url=prometheus.url,
                window_s=WINDOW_S,
                timeout_s=1.0,
                subsets_by_route={ROUTE: ("v1", "v2")},
                weights_source=mesh.current,
            ),
            actuator=mesh,
            policy=FixedPolicy(),
            guard=Guard(
                GuardConfig(
                    max_step=20,
                    hold_s=3.0,
                    stale_after_s=30.0,
                    decay_step=10,
                    baseline={"v1": 50, "v2": 50},
                )
            ),
            store=store,
            routes=[ROUTE],
            clock=WallClock(),
            slo_ms=250.0,
            writer_id="outage-test",
            verify_after_s=WINDOW_S,
            verify_tolerance=15.0,
        )
        yield loop, prometheus, sim
    finally:
        feeder.stopped.set()
        feeder.join(timeout=5)
        prometheus.close()
        exporter.stop()
        store.close()


def _tick_until(loop: ControlLoop, done, limit: int = 40) -> list[TickResult]:  # type: ignore[no-untyped-def]
    seen: list[TickResult] = []
    for _ in range(limit):
        result = loop.tick()[0]
        seen.append(result)
        if done(result):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"condition not reached; last results: {seen[-3:]}")


def test_loop_holds_decays_and_resumes_across_a_prometheus_outage(world) -> None:  # type: ignore[no-untyped-def]
    loop, prometheus, sim = world
    _tick_until(loop, lambda r: r.weights is not None and r.weights["v1"] == 90)
    assert sim.pending["v1"] == 90

    prometheus.kill()
    during = _tick_until(loop, lambda r: r.weights is not None and r.weights["v1"] == 50)
    phases = [r.phase for r in during]
    assert "holding" in phases
    assert all(r.phase in ("holding", "active") for r in during)
    first_hold = phases.index("holding")
    assert not during[first_hold].wrote, "the first stale tick holds, it does not move"
    v1 = [r.weights["v1"] for r in during if r.weights is not None]
    assert all(b <= a for a, b in itertools.pairwise(v1)), "decay only moves toward 50"
    assert all(a - b <= 10 for a, b in itertools.pairwise(v1)), "decay_step bounds moves"
    written = [r.weights["v1"] for r in during if r.wrote and r.weights is not None]
    assert written == sorted(set(written), reverse=True), "never the same weights twice"
    assert sim.pending["v1"] == 50

    token = "outage-operator-token"
    app = create_app(
        settings=load_settings(),
        loop=loop,
        store=loop.store,
        guard=loop.guard,
        api_token=token,
    )
    path = f"/routes/{ROUTE.namespace}/{ROUTE.virtual_service}/{ROUTE.route}"
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as api:
        ready = api.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["ready"] and not ready.json()["observing"]
        route = api.get(path).json()
        assert route["phase"] == "holding" and "observe failed" in route["degraded"]
        assert "meshpilot_observing 0.0" in api.get("/metrics").text
        pin = {"v1": 20, "v2": 80}
        answer = api.post(f"{path}/override", json={"weights": pin, "ttl_s": 600})
        assert answer.status_code == 200, answer.text
        assert answer.json()["pin_plan"]["writes"]
        (pinned,) = loop.tick()
        assert pinned.phase == "overridden" and pinned.wrote and sim.pending.as_dict() == pin
        assert api.get("/readyz").status_code == 200
        assert api.delete(f"{path}/override").status_code == 200

    prometheus.restart()
    after = _tick_until(
        loop, lambda r: r.phase == "active" and r.weights is not None and r.weights["v1"] > 50
    )
    assert after[-1].wrote
    assert sim.pending["v1"] > 50
