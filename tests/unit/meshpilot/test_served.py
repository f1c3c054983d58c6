"""Policies measured as served (`meshpilot.served`, `run_episode(..., gate=...)`).

Cases:
- a scripted policy that jumps 100 points per tick moves at most the guard's max_step per
  tick as served (the reasons say the step was clamped), 100 raw;
- a harmful policy (all traffic to a version a third of the load's size) is overruled by the
  supervisor's fallback as served, and does far less harm than raw;
- a jittery policy (one point back and forth) churns as served less than raw, because of
  min_change;
- an episode as served is, step for step, what the real control loop of `serve` writes over
  the same simulated mesh on its clock (weights, scores and reasons);
- served_setup: oracles stay raw, ``supervised:NAME`` is not wrapped twice, everything else
  is behind the supervisor and a fresh default guard; unknown names are ConfigErrors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from agents.registry import make_policy
from agents.rollout import EpisodeTrace, run_episode
from agents.supervisor import SupervisedPolicy
from controller.guard import Guard, GuardConfig
from controller.loop import ControlLoop
from controller.settings import GuardSettings
from controller.store import DecisionStore
from envs.simulator.engine import MeshSimulator
from envs.simulator.mesh import SimulatedMesh
from envs.simulator.realtime import RealtimeSimulatedMesh
from envs.simulator.scenario import Scenario, load_scenario
from meshcore.errors import ConfigError
from meshcore.model import Observation, Weights
from meshpilot.served import as_served, served_guard_config, served_setup

MAX_STEP = GuardConfig().max_step


class Scripted:
    """A policy that proposes the given splits in turn, whatever it observes."""

    def __init__(self, splits: Sequence[dict[str, int]], name: str = "scripted") -> None:
        self.name = name
        self._splits = [Weights.from_dict(s) for s in splits]
        self._n = 0

    def reset(self) -> None:
        self._n = 0

    def decide(self, obs: Observation) -> Weights:
        split = self._splits[self._n % len(self._splits)]
        self._n += 1
        return split


def _scenario(subsets: list[dict[str, Any]], rps: float, initial: dict[str, int]) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "served-test",
            "duration_s": 300,
            "step_s": 5,
            "slo_ms": 250,
            "load": {"rps": rps},
            "subsets": subsets,
            "initial_weights": initial,
        }
    )


def _twins(rps: float = 100.0) -> Scenario:
    """Two equal versions of 200 rps each, started at 50/50."""
    twin = {"replicas": 4, "service_ms": 20, "error_rate": 0.001}
    return _scenario([{"name": "a", **twin}, {"name": "b", **twin}], rps, {"a": 50, "b": 50})


def _steps(trace: EpisodeTrace, start: dict[str, int]) -> list[int]:
    """Largest per-version move (points) of every step, from the start weights on."""
    prev, out = start, []
    for w in trace.weights:
        out.append(max(abs(w[s] - prev[s]) for s in w))
        prev = w
    return out


def test_a_jumping_policy_moves_at_most_max_step_per_tick_as_served() -> None:
    sc = _twins()
    jumper = Scripted([{"a": 100, "b": 0}, {"a": 0, "b": 100}])
    _, raw = run_episode(sc, jumper, seed=1, trace=True)
    policy, gate = as_served(Scripted([{"a": 100, "b": 0}, {"a": 0, "b": 100}]))
    _, served = run_episode(sc, policy, seed=1, trace=True, gate=gate)
    assert raw is not None and served is not None
    assert max(_steps(raw, sc.start_weights())) == 100
    moves = _steps(served, sc.start_weights())
    assert max(moves) == MAX_STEP
    assert sum(served.wrote) > len(moves) // 2  # it does move, only slower
    assert any("step clamped +50->+10" in r or "step clamped -50->-10" in r for r in served.reason)
    assert all(served.intervened[i] for i, r in enumerate(served.reason) if "clamped" in r)


def test_a_harmful_policy_is_overruled_by_the_supervisor_as_served() -> None:
    big = {"name": "big", "replicas": 4, "service_ms": 20, "error_rate": 0.001}
    small = {"name": "small", "replicas": 1, "service_ms": 20, "error_rate": 0.001}
    sc = _scenario([big, small], 150.0, {"big": 75, "small": 25})
    all_small = [{"big": 0, "small": 100}]
    raw_summary, _ = run_episode(sc, Scripted(all_small), seed=2)
    policy, gate = as_served(Scripted(all_small))
    served_summary, served = run_episode(sc, policy, seed=2, trace=True, gate=gate)
    assert served is not None
    assert any(r.startswith("supervisor: fallback to planner") for r in served.reason)
    assert max(w["small"] for w in served.weights) <= 60  # never near what it asked for
    assert served.weights[-1]["small"] <= 40
    assert served_summary.bad_fraction < raw_summary.bad_fraction / 3


@pytest.mark.parametrize("supervise", [False, True])
def test_a_jittery_policy_churns_less_as_served(supervise: bool) -> None:
    """A one-point jitter is never written: the guard's min_change holds it, and before that
    (as served) the supervisor's quiet gate, which holds every one-point move."""
    sc = _twins()
    jitter = [{"a": 50, "b": 50}, {"a": 51, "b": 49}]
    raw, _ = run_episode(sc, Scripted(jitter), seed=3)
    policy, gate = as_served(Scripted(jitter), supervise=supervise)
    served, trace = run_episode(sc, policy, seed=3, trace=True, gate=gate)
    assert trace is not None
    assert raw.churn > 0.9  # one point moved on (almost) every step
    assert served.churn == 0.0
    assert not any(trace.wrote)
    held_by = "1-point move: the current split stays" if supervise else "< min_change 3"
    assert any(held_by in r for r in trace.reason)


def test_an_episode_as_served_is_what_the_control_loop_writes() -> None:
    sc = load_scenario("degraded-canary").with_changes(duration_s=400.0)
    policy, gate = as_served(make_policy("greedy"))
    summary, trace = run_episode(sc, policy, seed=4, trace=True, gate=gate)
    assert trace is not None

    sim = MeshSimulator(sc, seed=4)
    mesh = RealtimeSimulatedMesh(mesh=SimulatedMesh({sim.route: sim}), step_s=sc.step_s)
    loop = ControlLoop(
        observer=mesh,
        actuator=mesh,
        policy=SupervisedPolicy(make_policy("greedy")),
        guard=Guard(GuardSettings().to_config()),  # what `serve` builds by default
        store=DecisionStore(":memory:"),
        routes=mesh.routes,
        clock=mesh.clock,
        slo_ms=sc.slo_ms,
        writer_id="test",
        verify_after_s=sc.telemetry.window_s,
        verify_tolerance=10.0,
    )
    weights, reasons = [], []
    while not sim.done:
        (result,) = loop.tick()
        mesh.advance()
        weights.append(mesh.current(sim.route).as_dict())
        reasons.append(result.reason)
    assert weights == trace.weights
    assert sim.summary() == summary
    for ours, theirs in zip(trace.reason, reasons, strict=True):
        assert theirs == ours or theirs.startswith(ours + "; verify: ")


def test_served_setup_wraps_what_serve_wraps() -> None:
    policy, gate = served_setup("greedy")
    assert isinstance(policy, SupervisedPolicy) and policy.primary.name == "greedy"
    assert isinstance(gate, Guard) and gate.config == GuardSettings().to_config()
    assert served_guard_config() == GuardSettings().to_config()
    again, other = served_setup("greedy")
    assert again is not policy and other is not gate  # fresh per episode
    once, gate = served_setup("supervised:equal")
    assert isinstance(once, SupervisedPolicy) and once.primary.name == "equal"
    assert gate is not None
    for name in ("oracle", "oracle-late", "oracle-hindsight"):
        yardstick, none = served_setup(name)
        assert none is None and yardstick.name == name
    with pytest.raises(ConfigError, match="bogus"):
        served_setup("bogus")


def test_the_served_shipped_policy_settles_on_a_stationary_mesh() -> None:
    # steady-80: constant load, no events. After two minutes the served controller holds
    # its split while the telemetry only shows noise (a write is a config push to every proxy).
    sc = load_scenario("steady-80")
    policy, gate = as_served(make_policy("ppo"))
    _, trace = run_episode(sc, policy, seed=0, trace=True, gate=gate)
    assert trace is not None
    late = [t for t, wrote in zip(trace.t_s, trace.wrote, strict=True) if wrote and t > 120.0]
    assert len(late) <= 3, late  # in 28 minutes
