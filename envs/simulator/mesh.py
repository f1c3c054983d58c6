"""`SimulatedMesh`: the simulator behind the `Observer` and `Actuator` ports.

The Gymnasium env and `meshpilot serve --mesh sim` both drive simulated routes through the
same two ports the live controller uses against Prometheus and Istio, so the loop code is
exercised identically in simulation and in production.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envs.simulator.engine import MeshSimulator, StepCounts
from meshcore.errors import PermanentError
from meshcore.model import Observation, RouteRef, Weights


class SimulatedMesh:
    """Several independent simulated routes; `advance()` moves all of them one step."""

    def __init__(self, simulators: Mapping[RouteRef, MeshSimulator]):
        self._sims = dict(simulators)

    @property
    def routes(self) -> tuple[RouteRef, ...]:
        return tuple(self._sims)

    def simulator(self, route: RouteRef) -> MeshSimulator:
        try:
            return self._sims[route]
        except KeyError as err:
            raise PermanentError(f"route {route.key} is not simulated") from err

    def observe(self, routes: Sequence[RouteRef]) -> dict[RouteRef, Observation]:
        return {r: self.simulator(r).observe() for r in routes}

    def current(self, route: RouteRef) -> Weights:
        """The configured weights (the last applied), as a VirtualService read would return."""
        return self.simulator(route).pending

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        sim = self.simulator(route)
        if set(weights.subsets) != set(sim.subsets):
            raise PermanentError(
                f"route {route.key}: weights name {sorted(weights.subsets)}, "
                f"the route has {sorted(sim.subsets)}"
            )
        sim.pending = Weights(sim.subsets, [weights[s] for s in sim.subsets])
        return sim.pending

    def advance(self) -> dict[RouteRef, StepCounts]:
        """Simulate one control interval on every route with its latest applied weights."""
        return {r: sim.step(sim.pending) for r, sim in self._sims.items()}
