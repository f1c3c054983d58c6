"""`meshpilot evaluate --mesh lab` wiring that needs no lab: options and the per-step decider.

Cases: lab-only and sim-only options refused in the other mode before any work; an unknown
policy and a scenario with a warmup refused before a lab starts; the decider writes the raw
policy's proposal, holds without data or when the policy raises (and keeps the failure),
passes the proposal through the gate as served (write or hold as its verdict says), and gives
an oracle a simulator whose clock follows the replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from envs.simulator.scenario import Scenario, parse_scenario
from meshcore.errors import ConfigError
from meshcore.model import Observation, RouteRef, SubsetStats, Weights
from meshpilot.cli import main
from meshpilot.lab_evaluation import decider, run_lab

ROUTE = RouteRef("lirmm-services", "svc", "default", "svc.lirmm-services.svc.cluster.local")
SCENARIO: Scenario = parse_scenario(
    {
        "name": "s",
        "duration_s": 60,
        "load": {"rps": 100},
        "subsets": [
            {"name": "v1", "replicas": 3, "service_ms": 20},
            {"name": "v2", "replicas": 1, "service_ms": 20},
        ],
        "events": [{"at_s": 30, "subset": "v1", "set": {"capacity_factor": 0.1}}],
    }
)
OBS = Observation(
    route=ROUTE,
    subsets=("v1", "v2"),
    stats=(SubsetStats(70.0, 0.0, 30.0, 75), SubsetStats(30.0, 0.0, 30.0, 25)),
    timestamp_s=0.0,
)


class FixedPolicy:
    name = "fixed"

    def __init__(self, weights: Weights | None = None, fail: bool = False) -> None:
        self.weights = weights or Weights.from_dict({"v1": 40, "v2": 60})
        self.fail = fail

    def decide(self, obs: Observation) -> Weights:
        if self.fail:
            raise RuntimeError("boom")
        return self.weights

    def reset(self) -> None:
        pass


class FakeActuator:
    def __init__(self) -> None:
        self.weights = Weights.from_dict({"v1": 75, "v2": 25})

    def current(self, route: RouteRef) -> Weights:
        return self.weights

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        self.weights = weights
        return weights


@dataclass(frozen=True)
class Verdict:
    weights: Weights
    write: bool
    reason: str = ""


class FakeGate:
    def __init__(self, write: bool) -> None:
        self.write = write
        self.seen: list[dict[str, Any]] = []

    def review(self, **kw: Any) -> Verdict:
        self.seen.append(kw)
        w = Weights.from_dict({"v1": 65, "v2": 35}) if self.write else kw["current"]
        return Verdict(w, self.write)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--lab-duration", "30"], "--lab-duration needs --mesh lab"),
        (["--mesh", "lab", "--workers", "2"], "--workers: the lab runs one episode at a time"),
    ],
)
def test_options_of_the_other_mesh_are_refused(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--policy", "equal", "--scenarios", "steady-80", *argv]) == 2
    assert says in capsys.readouterr().err


def test_an_unknown_policy_is_refused_before_a_lab_starts() -> None:
    with pytest.raises(ConfigError):
        run_lab([SCENARIO], ["no-such-policy"], [0])


def test_a_scenario_with_a_warmup_is_refused_before_a_lab_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lab starts on idle backends: a generated mesh (`warmup_s: 5`) is refused at once,
    from the API and from the command line, with what to change."""
    warm = SCENARIO.with_changes(warmup_s=5.0)
    with pytest.raises(ConfigError, match="set warmup_s: 0"):
        run_lab([warm], ["equal"], [0])
    path = tmp_path / "warm.yaml"
    path.write_text(yaml.safe_dump(warm.model_dump(mode="json", exclude_none=True)))
    assert main(["evaluate", "--mesh", "lab", "--policy", "equal", "--scenarios", str(path)]) == 2
    assert "does not replay a warmup" in capsys.readouterr().err


def test_rawdecider_writes_the_proposal_and_holds_without_data() -> None:
    failures: list[str] = []
    decide = decider(FixedPolicy(), None, FakeActuator(), ROUTE, SCENARIO, failures)
    assert decide(OBS, 5.0) == Weights.from_dict({"v1": 40, "v2": 60})
    assert decide(None, 10.0) is None
    assert failures == []


def test_a_failing_policy_holds_and_the_failure_is_kept() -> None:
    failures: list[str] = []
    decide = decider(FixedPolicy(fail=True), None, FakeActuator(), ROUTE, SCENARIO, failures)
    assert decide(OBS, 5.0) is None
    assert failures == ["RuntimeError: boom"]


@pytest.mark.parametrize("write", [True, False])
def test_as_served_the_gate_reviews_every_proposal(write: bool) -> None:
    gate = FakeGate(write)
    actuator = FakeActuator()
    decide = decider(FixedPolicy(), gate, actuator, ROUTE, SCENARIO, [])
    out = decide(OBS, 5.0)
    assert out == (Weights.from_dict({"v1": 65, "v2": 35}) if write else None)
    (kw,) = gate.seen
    assert kw["current"] == actuator.weights
    assert kw["proposed"] == Weights.from_dict({"v1": 40, "v2": 60})
    assert kw["observation"].stats == OBS.stats


def test_the_policy_sees_the_lab_files_capacity_and_slo_as_the_loop_gives_them() -> None:
    seen: list[Observation] = []

    class Recording(FixedPolicy):
        def decide(self, obs: Observation) -> Weights:
            seen.append(obs)
            return super().decide(obs)

    hints = {"v1": 150.0, "v2": 50.0}
    decide = decider(Recording(), None, FakeActuator(), ROUTE, SCENARIO, [], hints)
    decide(OBS, 5.0)
    (obs,) = seen
    assert obs.capacity_hint_rps == (150.0, 50.0)
    assert obs.slo_ms == SCENARIO.slo_ms


def test_an_oracle_reads_the_scenario_at_the_replays_clock() -> None:
    from agents.registry import make_policy

    oracle = make_policy("oracle")
    decide = decider(oracle, None, FakeActuator(), ROUTE, SCENARIO, [])
    before, after = decide(OBS, 5.0), decide(OBS, 40.0)
    assert before is not None and after is not None
    assert after["v1"] < before["v1"]  # v1 lost 90 % of its capacity at 30 s
