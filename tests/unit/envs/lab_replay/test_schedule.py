"""The lab replays a scenario's events as the simulator interprets them.

Cases: an event with a ramp and a duration becomes a start move and a restore move (its time,
its ramp, the values before); the moves, played by a backend that ramps linearly, give the
simulator's parameters at every instant (property, against `MeshSimulator.true_state`);
`play_events` on a fake clock applies each move at its time and stops when told; a shortened
run skips later moves and says so; a `replicas` change becomes a capacity change of the same
total capacity, with a note; the client-side scores (bad fraction, errors, churn).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.lab.load_result import NO_SUBSET, LoadResult
from envs.lab.replay import (
    FaultAction,
    StepRecord,
    client_metrics,
    event_schedule,
    lab_values,
    play_events,
)
from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import Scenario, parse_scenario


def _scenario(events: list[dict[str, Any]], duration_s: float = 200.0) -> Scenario:
    return parse_scenario(
        {
            "name": "replay",
            "duration_s": duration_s,
            "load": {"rps": 100},
            "subsets": [
                {"name": "v1", "replicas": 3, "service_ms": 20, "error_rate": 0.001},
                {"name": "v2", "replicas": 2, "service_ms": 25},
            ],
            "events": events,
        }
    )


class FakeClock:
    """Seconds that pass only when the code under test waits."""

    def __init__(self) -> None:
        self.t = 100.0
        self.stop_at = float("inf")

    def now(self) -> float:
        return self.t

    def wait(self, seconds: float) -> bool:
        if self.t + seconds >= self.stop_at:
            self.t = self.stop_at
            return True
        self.t += seconds
        return False


class RampingBackend:
    """The backends' parameter model: each move goes linearly from the value in force."""

    def __init__(self, scenario: Scenario) -> None:
        self.params = {
            s.name: {f: (v, v, 0.0, 0.0) for f, v in lab_values(scenario, s.name, -1.0).items()}
            for s in scenario.subsets
        }

    @staticmethod
    def _at(p: tuple[float, float, float, float], t: float) -> float:
        base, target, t0, ramp = p
        if ramp <= 0 or t >= t0 + ramp:
            return target
        if t <= t0:
            return base
        return base + (target - base) * (t - t0) / ramp

    def move(self, action: FaultAction) -> None:
        sub = self.params[action.subset]
        for f, v in action.changes.items():
            sub[f] = (self._at(sub[f], action.at_s), v, action.at_s, action.ramp_s)

    def value(self, subset: str, field: str, t: float) -> float:
        return self._at(self.params[subset][field], t)


def test_an_event_with_ramp_and_duration_is_a_start_and_a_restore() -> None:
    sc = _scenario(
        [{"at_s": 30, "subset": "v2", "set": {"error_rate": 0.2}, "ramp_s": 10, "duration_s": 40}]
    )
    sched = event_schedule(sc)
    assert [(a.at_s, a.subset, dict(a.changes), a.ramp_s) for a in sched.actions] == [
        (30.0, "v2", {"error_rate": 0.2}, 10.0),
        (80.0, "v2", {"error_rate": 0.0}, 10.0),
    ]
    assert sched.notes == ()


def test_play_events_applies_each_move_at_its_time_on_a_fake_clock() -> None:
    sc = _scenario(
        [
            {
                "at_s": 30,
                "subset": "v2",
                "set": {"error_rate": 0.2},
                "ramp_s": 10,
                "duration_s": 40,
            },
            {"at_s": 5, "subset": "v1", "set": {"service_ms": 50}},
        ]
    )
    clock = FakeClock()
    seen: list[tuple[float, str]] = []
    done = play_events(
        event_schedule(sc).actions,
        lambda a: seen.append((clock.now() - 100.0, a.why)),
        now=clock.now,
        wait=clock.wait,
    )
    assert seen == [(5.0, "event 1"), (30.0, "event 0"), (80.0, "event 0 restored")]
    assert [t for t, _ in done] == [5.0, 30.0, 80.0]


def test_play_events_stops_when_the_run_is_stopped() -> None:
    sc = _scenario(
        [
            {"at_s": 30, "subset": "v2", "set": {"error_rate": 0.2}, "duration_s": 40},
        ]
    )
    clock = FakeClock()
    clock.stop_at = 100.0 + 50.0
    applied: list[str] = []
    done = play_events(
        event_schedule(sc).actions,
        lambda a: applied.append(a.why),
        now=clock.now,
        wait=clock.wait,
    )
    assert applied == ["event 0"]
    assert len(done) == 1


def test_a_shortened_run_skips_later_moves_and_says_so() -> None:
    sc = _scenario(
        [
            {"at_s": 10, "subset": "v1", "set": {"capacity_factor": 0.5}, "duration_s": 60},
            {"at_s": 150, "subset": "v2", "set": {"error_rate": 0.3}},
        ]
    )
    sched = event_schedule(sc, duration_s=40)
    assert [a.why for a in sched.actions] == ["event 0"]
    assert any("event 0 restored at 70 s skipped" in n for n in sched.notes)
    assert any("event 1 at 150 s skipped" in n for n in sched.notes)


def test_replicas_become_capacity_of_the_same_total_with_a_note() -> None:
    sc = _scenario([{"at_s": 20, "subset": "v1", "set": {"replicas": 1}, "duration_s": 30}])
    sched = event_schedule(sc)
    assert [dict(a.changes) for a in sched.actions] == [
        {"capacity_factor": pytest.approx(1 / 3)},
        {"capacity_factor": pytest.approx(1.0)},
    ]
    assert any("replicas" in n and "capacity_factor" in n for n in sched.notes)


_FIELDS = {"error_rate": (0.0, 1.0), "service_ms": (5.0, 80.0), "capacity_factor": (0.2, 3.0)}


@st.composite
def _events(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events on both subsets; on one subset and field, each starts after the last ended."""
    events: list[dict[str, Any]] = []
    for subset in ("v1", "v2"):
        for field, (lo, hi) in _FIELDS.items():
            t = 0.0
            for _ in range(draw(st.integers(0, 2))):
                at = t + draw(st.floats(0.0, 30.0))
                ramp = draw(st.sampled_from([0.0, draw(st.floats(0.5, 20.0))]))
                dur = draw(st.one_of(st.none(), st.floats(1.0, 30.0)))
                events.append(
                    {
                        "at_s": at,
                        "subset": subset,
                        "set": {field: draw(st.floats(lo, hi))},
                        "ramp_s": ramp,
                        "duration_s": dur,
                    }
                )
                t = at + ramp + (0.0 if dur is None else dur + ramp) + 0.1
                if dur is None:
                    break
    return events


@settings(max_examples=60, deadline=None)
@given(_events())
def test_the_moves_reproduce_the_simulators_parameters_at_every_instant(
    events: list[dict[str, Any]],
) -> None:
    sc = _scenario(events, duration_s=1000.0)
    backend = RampingBackend(sc)
    actions = list(event_schedule(sc).actions)
    sim = MeshSimulator(sc, seed=0)
    for t in np.linspace(0.05, 400.0, 397):
        while actions and actions[0].at_s <= t:
            backend.move(actions.pop(0))
        truth = {s.name: s for s in sim.true_state(float(t)).subsets}
        for sub in sc.subsets:
            tr = truth[sub.name]
            want = {
                "error_rate": tr.error_rate,
                "service_ms": tr.service_ms,
                "capacity_factor": tr.capacity_factor * tr.replicas / sub.replicas,
            }
            for field, value in want.items():
                assert backend.value(sub.name, field, float(t)) == pytest.approx(value, rel=1e-9), (
                    f"{sub.name}.{field} at t={t}"
                )


def _load(latency_ms: list[float], status: list[int]) -> LoadResult:
    n = len(status)
    return LoadResult(
        target="127.0.0.1:1",
        hosts=("svc",),
        duration_s=10.0,
        asked_rps=n / 10.0,
        scheduled=n,
        send_s=np.linspace(0, 10, n),
        latency_ms=np.array(latency_ms),
        status=np.array(status, dtype=np.int32),
        subset=np.array([NO_SUBSET] * n),
        host=np.zeros(n, dtype=np.int32),
        lag_ms=np.zeros(n),
    )


def test_client_scores_count_errors_and_slow_requests_and_weight_moves() -> None:
    load = _load([10, 20, 300, 40, 5000], [200, 503, 200, 200, 0])
    steps = [
        StepRecord(5.0, {"v1": 60, "v2": 40}, None, True),
        StepRecord(10.0, {"v1": 50, "v2": 50}, None, True),
    ]
    m = client_metrics(load, 250.0, {"v1": 60, "v2": 40}, steps)
    assert m["bad_fraction"] == pytest.approx(3 / 5)
    assert m["error_rate"] == pytest.approx(2 / 5)
    assert m["churn"] == pytest.approx((0 + 10) / 2)
    assert m["requests"] == 5
    assert m["mean_ms"] == pytest.approx(np.mean([10, 20, 300, 40, 5000]))
