"""Run one policy through one simulated episode: the shared core of `simulate` and `evaluate`.

The policy acts through the same ports as in production (`SimulatedMesh` as Observer and
Actuator); policies that may see the simulator's ground truth (the oracle) get it through
`bind_simulator`, nothing else does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envs.simulator.engine import EpisodeSummary, MeshSimulator
from envs.simulator.mesh import SimulatedMesh
from envs.simulator.scenario import Scenario
from meshcore.ports import Policy


@dataclass
class EpisodeTrace:
    """Per-step record of a run: time (s), weights written, and the step's bad fraction."""

    t_s: list[float] = field(default_factory=list)
    weights: list[dict[str, int]] = field(default_factory=list)
    bad_fraction: list[float] = field(default_factory=list)


def run_episode(
    scenario: Scenario, policy: Policy, *, seed: int, trace: bool = False
) -> tuple[EpisodeSummary, EpisodeTrace | None]:
    """Simulate `scenario` with `policy` deciding every step; same seed => same arrivals."""
    sim = MeshSimulator(scenario, seed=seed)
    mesh = SimulatedMesh({sim.route: sim})
    route = sim.route
    policy.reset()
    bind = getattr(policy, "bind_simulator", None)
    if callable(bind):
        bind(sim)
    record = EpisodeTrace() if trace else None
    while not sim.done:
        obs = mesh.observe([route])[route]
        weights = policy.decide(obs)
        mesh.apply(route, weights)
        counts = mesh.advance()[route]
        if record is not None:
            record.t_s.append(sim.t_s)
            record.weights.append(weights.as_dict())
            total = counts.total
            record.bad_fraction.append(int(counts.bad.sum()) / total if total else 0.0)
    return sim.summary(), record
