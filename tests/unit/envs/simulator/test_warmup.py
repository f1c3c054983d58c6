"""`warmup_s`: the mesh runs at its initial weights before t = 0, unscored.

Cases: the first observation at t = 0 has data (a controller taking over a running mesh sees
history); nothing of the warmup is scored, but its queues are inherited (a warmup at an
overloading split leaves a worse episode than a cold start); the clock and step count start
at 0 as without a warmup; a seeded run with a warmup repeats exactly; without one the
simulator is unchanged (no data at t = 0); the lab refuses a warmup it cannot replay.
"""

from __future__ import annotations

import math

import pytest

from envs.lab.replay import refuse_warmup
from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import Scenario, ScenarioError, parse_scenario
from meshcore import Weights


def _scenario(warmup_s: float, weights: dict[str, int] | None = None) -> Scenario:
    return parse_scenario(
        {
            "name": "warm",
            "duration_s": 60,
            "slo_ms": 250,
            "load": {"rps": 150},
            "subsets": [
                {"name": "v1", "replicas": 2, "service_ms": 20},  # 100 rps
                {"name": "v2", "replicas": 2, "service_ms": 20},  # 100 rps
            ],
            "initial_weights": weights or {"v1": 50, "v2": 50},
            "warmup_s": warmup_s,
        }
    )


def _run(sim: MeshSimulator, weights: Weights) -> float:
    while not sim.done:
        sim.step(weights)
    return sim.summary().bad_fraction


def test_first_observation_of_a_warm_mesh_has_data() -> None:
    cold, warm = MeshSimulator(_scenario(0)), MeshSimulator(_scenario(10))
    assert not any(st.has_data for st in cold.observe().stats)
    obs = warm.observe()
    assert all(st.has_data for st in obs.stats)
    assert obs.timestamp_s == 0.0 and warm.t_s == 0.0 and warm.step_index == 0
    assert warm.summary().requests == 0 and math.isnan(warm.summary().bad_fraction)
    assert obs.stats[0].rps == pytest.approx(75, rel=0.3)


def test_the_warmup_is_not_scored_but_its_queues_are_inherited() -> None:
    overload = {"v1": 100, "v2": 0}  # 150 rps on 100 rps of capacity
    fix = Weights.from_dict({"v1": 50, "v2": 50})
    cold = _run(MeshSimulator(_scenario(0, overload), seed=3), fix)
    warm = _run(MeshSimulator(_scenario(15, overload), seed=3), fix)
    assert cold < 0.01
    assert warm > 0.1  # 15 s at 150 % of v1's capacity leave a backlog to drain
    sim = MeshSimulator(_scenario(15, overload), seed=3)
    _run(sim, fix)
    assert sim.summary().requests == pytest.approx(150 * 60, rel=0.1)
    assert sim.t_s == pytest.approx(60.0) and sim.step_index == _scenario(15).n_steps


def test_a_seeded_warm_run_repeats_exactly() -> None:
    w = Weights.from_dict({"v1": 60, "v2": 40})
    a = MeshSimulator(_scenario(10), seed=7)
    b = MeshSimulator(_scenario(10), seed=7)
    _run(a, w)
    _run(b, w)
    assert a.summary() == b.summary()
    b.reset(7)
    _run(b, w)
    assert a.summary() == b.summary()


def test_the_lab_refuses_a_warmup_it_cannot_replay() -> None:
    refuse_warmup(_scenario(0))
    with pytest.raises(ScenarioError, match=r"warmup_s 10.*set warmup_s: 0"):
        refuse_warmup(_scenario(10))
