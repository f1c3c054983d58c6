"""`RealtimeSimulatedMesh`: the simulator as a live mesh, for `meshpilot serve --mesh sim`.

Why: the whole service — scheduler, guard, store, API, metrics — should be runnable and
demonstrable on a laptop without Kubernetes, and exercised end to end by the tests. This
module runs a `SimulatedMesh` forward in wall time on a background thread, one `advance()`
(one scenario ``step_s`` of simulated time) every ``step_s / speed`` wall seconds, and serves
the `Observer` and `Actuator` ports thread-safely to the control loop on another thread.

Its `clock` reads *simulated* seconds, so the loop, the guard (hold, decay, pin TTLs) and the
verifier all run on the mesh's time: with ``speed=10`` a 30 s rate window passes in 3 wall s.
`current()` returns the configured (last applied) weights, as reading a VirtualService does;
the data plane uses them from the next simulated step on. Scenario events play once; after
``duration_s`` a scenario keeps its final state.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence

from envs.simulator.engine import MeshSimulator
from envs.simulator.mesh import SimulatedMesh
from envs.simulator.scenario import Scenario
from meshcore import ConfigError, Observation, RouteRef, Weights

__all__ = ["DEFAULT_NAMESPACE", "RealtimeSimulatedMesh", "SimClock", "route_for"]

_log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "lirmm-services"
"""Namespace of the simulated routes (the lirmm platform's)."""


def route_for(scenario_name: str, namespace: str = DEFAULT_NAMESPACE) -> RouteRef:
    """The route a scenario is served as: ``<namespace>/<scenario>/default``."""
    host = f"{scenario_name}.{namespace}.svc.cluster.local"
    return RouteRef(namespace, scenario_name, "default", host)


class SimClock:
    """Simulated time of a `RealtimeSimulatedMesh` (s); `sleep` waits the matching wall time."""

    def __init__(self, mesh: RealtimeSimulatedMesh) -> None:
        self._mesh = mesh

    def now(self) -> float:
        return self._mesh.sim_time_s

    def sleep(self, seconds: float) -> None:
        time.sleep(max(seconds, 0.0) / self._mesh.speed)


class RealtimeSimulatedMesh:
    """Several simulated routes advancing together in (scaled) wall time.

    mesh: the routes; step_s: simulated seconds per `advance` (every route's scenario step);
    speed: simulated seconds per wall second (default 1.0, real time); max_catchup_steps: when
    the thread falls further behind than this many steps (a slow machine, a high speed), it
    skips ahead instead of racing to catch up, and logs it.
    """

    def __init__(
        self,
        *,
        mesh: SimulatedMesh,
        step_s: float,
        speed: float = 1.0,
        max_catchup_steps: int = 10,
    ) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ConfigError(f"sim speed must be > 0 simulated s per wall s, got {speed}")
        if not (math.isfinite(step_s) and step_s > 0):
            raise ConfigError(f"sim step_s must be > 0 s, got {step_s}")
        self._mesh = mesh
        self.step_s = float(step_s)
        self.speed = float(speed)
        self.max_catchup_steps = max(1, max_catchup_steps)
        self._lock = threading.Lock()
        self._sim_time_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.clock = SimClock(self)

    @classmethod
    def from_scenarios(
        cls,
        *,
        scenarios: Sequence[Scenario],
        speed: float = 1.0,
        seed: int = 0,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> RealtimeSimulatedMesh:
        """One route per scenario (`route_for`), seeded ``seed, seed+1, ...`` in order.

        All scenarios must share one ``step_s`` (they advance together); names must differ.
        """
        if not scenarios:
            raise ConfigError("sim mesh: at least one scenario is needed")
        names = [s.name for s in scenarios]
        if len(set(names)) != len(names):
            raise ConfigError(
                f"sim mesh: scenario names must be unique (they name routes): {names}"
            )
        steps = {s.step_s for s in scenarios}
        if len(steps) != 1:
            detail = ", ".join(f"{s.name}: {s.step_s:g} s" for s in scenarios)
            raise ConfigError(f"sim mesh: every scenario must have the same step_s ({detail})")
        sims = {
            route_for(sc.name, namespace): MeshSimulator(
                sc, seed=seed + i, route=route_for(sc.name, namespace)
            )
            for i, sc in enumerate(scenarios)
        }
        return cls(mesh=SimulatedMesh(sims), step_s=steps.pop(), speed=speed)

    # -- ports (called from the loop's thread) -----------------------------------------------

    @property
    def routes(self) -> tuple[RouteRef, ...]:
        return self._mesh.routes

    @property
    def sim_time_s(self) -> float:
        """Simulated seconds the mesh has been advanced to."""
        with self._lock:
            return self._sim_time_s

    def observe(self, routes: Sequence[RouteRef]) -> dict[RouteRef, Observation]:
        with self._lock:
            return self._mesh.observe(routes)

    def current(self, route: RouteRef) -> Weights:
        """The configured weights: the last applied, in use from the next simulated step."""
        with self._lock:
            return self._mesh.simulator(route).pending

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        with self._lock:
            return self._mesh.apply(route, weights)

    def capacity_rps(self, route: RouteRef) -> dict[str, float]:
        """Nominal capacity per subset of a simulated route (rps)."""
        with self._lock:
            sim = self._mesh.simulator(route)
            return dict(zip(sim.subsets, sim.nominal_capacity_rps(), strict=True))

    def slo_ms(self) -> float:
        """The strictest SLO of the simulated scenarios (ms)."""
        with self._lock:
            return min(self._mesh.simulator(r).scenario.slo_ms for r in self._mesh.routes)

    def window_s(self) -> float:
        """The longest telemetry rate window of the simulated scenarios (s)."""
        with self._lock:
            return max(
                self._mesh.simulator(r).scenario.telemetry.window_s for r in self._mesh.routes
            )

    # -- time ------------------------------------------------------------------------------

    def advance(self, steps: int = 1) -> float:
        """Simulate `steps` steps now (tests call this instead of `start`); returns sim time."""
        for _ in range(steps):
            with self._lock:
                self._mesh.advance()
                self._sim_time_s += self.step_s
                self.steps += 1
        return self.sim_time_s

    def start(self) -> None:
        """Advance in the background, one step every ``step_s / speed`` wall seconds."""
        if self._thread is not None:
            raise RuntimeError("RealtimeSimulatedMesh already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="meshpilot-sim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread and wait for it (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()

    def __enter__(self) -> RealtimeSimulatedMesh:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        period_s = self.step_s / self.speed
        due = time.monotonic() + period_s
        while not self._stop.wait(max(due - time.monotonic(), 0.0)):
            behind = int((time.monotonic() - due) / period_s) + 1
            todo = min(behind, self.max_catchup_steps)
            try:
                self.advance(todo)
            except Exception:
                _log.exception("simulated mesh step failed; stopping the simulation")
                return
            if behind > self.max_catchup_steps:
                _log.warning(
                    "simulated mesh is %d steps behind at speed %g; skipping ahead",
                    behind - todo,
                    self.speed,
                )
                due = time.monotonic() + period_s
            else:
                due += todo * period_s
