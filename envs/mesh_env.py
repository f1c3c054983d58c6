"""`MeshEnv`: the Gymnasium face of the observe/act contract, over the per-request simulator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.route_env import RouteEnv
from envs.simulator.engine import MeshSimulator
from envs.simulator.mesh import SimulatedMesh
from envs.simulator.scenario import Scenario, load_scenario, suite_paths
from meshcore.features import FeatureSpec, encode
from meshcore.model import Observation
from meshcore.reward import CHURN_COST, bad_fraction_estimate, reward


@dataclass(frozen=True)
class Randomization:
    """Domain randomization applied at each reset; each pair is a uniform (low, high) range.

    load_scale multiplies the mean arrival rate; service_scale multiplies each subset's service
    time independently; event_shift multiplies every event time; noise_add is added to the
    telemetry noise; drop_add to the drop probability.
    """

    load_scale: tuple[float, float] = (0.7, 1.1)
    service_scale: tuple[float, float] = (0.8, 1.25)
    event_shift: tuple[float, float] = (0.5, 1.5)
    noise_add: tuple[float, float] = (0.0, 0.1)
    drop_add: tuple[float, float] = (0.0, 0.02)


ScenarioLike = str | Path | Scenario


def _as_scenario(item: ScenarioLike) -> Scenario:
    return item if isinstance(item, Scenario) else load_scenario(item)


class MeshEnv(RouteEnv):
    """Set the traffic split of one Istio route, simulated request by request.

    ## Description
    Each step is one control interval (`scenario.step_s`, 5 s by default): the action becomes
    integer route weights, the simulator serves that interval's Poisson arrivals through FCFS
    replicas, and the agent sees what Prometheus would report over its rate window.

    ## Observation space
    `Box(0, p99_clip, (max_subsets * 8 + 2,), float32)` laid out by
    `meshcore.features` (present, has_data, weight, traffic_share, error_ratio,
    p99/slo, slow_ratio, capacity_share per subset slot; then route rps and staleness).

    ## Action space
    `Box(-1, 1, (max_subsets,), float32)`: logits of the split; `decode` applies a masked
    softmax and largest-remainder rounding, so every action is a valid split.

    ## Rewards
    `meshcore.reward.reward` on the noise-free telemetry of the interval just served:
    minus the bad-request fraction (5xx or slower than the SLO), minus a churn charge.

    ## Episode end
    Truncated when the scenario's `duration_s` (or `max_steps`) is reached; never terminated.

    ## Arguments
    scenario: one scenario (path, suite name or `Scenario`); scenarios: several, one drawn per
    reset; randomize: `True` or a `Randomization` to perturb the drawn scenario; spec: the
    `FeatureSpec`; max_steps: cap on the episode length; churn_cost: see `reward`.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        scenario: ScenarioLike | None = None,
        scenarios: Sequence[ScenarioLike] | None = None,
        randomize: bool | Randomization = False,
        spec: FeatureSpec | None = None,
        max_steps: int | None = None,
        churn_cost: float = CHURN_COST,
    ) -> None:
        if scenario is not None and scenarios is not None:
            raise ValueError("pass either scenario or scenarios, not both")
        if scenario is not None:
            pool = [_as_scenario(scenario)]
        elif scenarios:
            pool = [_as_scenario(s) for s in scenarios]
        else:
            pool = [load_scenario(p) for p in suite_paths()]
        self.spec_features = spec or FeatureSpec()
        for sc in pool:
            if len(sc.subsets) > self.spec_features.max_subsets:
                raise ValueError(
                    f"scenario {sc.name!r} has {len(sc.subsets)} subsets; the feature spec "
                    f"handles at most {self.spec_features.max_subsets}"
                )
        self._pool = pool
        self._randomization: Randomization | None = (
            Randomization() if randomize is True else (randomize or None)
        )
        self._max_steps = max_steps
        self._churn_cost = churn_cost
        self.observation_space = self.spec_features.observation_space()
        self.action_space = self.spec_features.action_space()
        self.mesh: SimulatedMesh | None = None
        self.sim: MeshSimulator | None = None
        self._obs: Observation | None = None
        self._steps = 0

    def _draw_scenario(self) -> Scenario:
        rng = self.np_random
        sc = self._pool[int(rng.integers(len(self._pool)))]
        rz = self._randomization
        if rz is None:
            return sc
        load = sc.load.model_copy(update={"rps": sc.load.rps * rng.uniform(*rz.load_scale)})
        subsets = tuple(
            s.model_copy(update={"service_ms": s.service_ms * rng.uniform(*rz.service_scale)})
            for s in sc.subsets
        )
        shift = rng.uniform(*rz.event_shift)
        events = tuple(e.model_copy(update={"at_s": e.at_s * shift}) for e in sc.events)
        tel = sc.telemetry.model_copy(
            update={
                "noise": sc.telemetry.noise + rng.uniform(*rz.noise_add),
                "drop_prob": min(sc.telemetry.drop_prob + rng.uniform(*rz.drop_add), 1.0),
            }
        )
        return sc.with_changes(
            load=load.model_dump(),
            subsets=[s.model_dump() for s in subsets],
            events=[e.model_dump() for e in events],
            telemetry=tel.model_dump(),
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        scenario = self._draw_scenario()
        sim_seed = int(self.np_random.integers(2**63 - 1))
        sim = MeshSimulator(scenario, seed=sim_seed)
        self.sim = sim
        self.mesh = SimulatedMesh({sim.route: sim})
        self._steps = 0
        self._obs = sim.observe()
        return encode(self._obs, self.spec_features), {"scenario": scenario.name}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.sim is None or self.mesh is None or self._obs is None:
            raise RuntimeError("call reset() before step()")
        before = self._obs
        weights = self.weights_for(action)
        route = self.sim.route
        self.mesh.apply(route, weights)
        counts = self.mesh.advance()[route]
        self._steps += 1
        truth = self.sim.observe_last_step()
        r = reward(
            before, weights, truth, slo_ms=self.sim.scenario.slo_ms, churn_cost=self._churn_cost
        )
        self._obs = self.mesh.observe([route])[route]
        truncated = self.sim.done or (
            self._max_steps is not None and self._steps >= self._max_steps
        )
        info = {
            "weights": weights.as_dict(),
            "requests": counts.total,
            "bad": int(counts.bad.sum()),
            "bad_fraction_estimate": bad_fraction_estimate(truth, self.sim.scenario.slo_ms),
        }
        return encode(self._obs, self.spec_features), float(r), False, bool(truncated), info
