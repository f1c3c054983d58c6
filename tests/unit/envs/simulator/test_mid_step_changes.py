"""A burst or an event that starts or ends inside a control step counts from that instant.

The lab's load generator thins arrivals against the continuous rate, and its backends change
at the event's time; a simulator that applied each step's mid-point values to the whole step
made a burst starting half way through a 5 s step last the whole step (1.5x the requests of
the closed form below). Cases, against closed forms: a 3x burst over [2.5, 7.5) s at 100 rps
brings 1000 requests to each of the steps [0, 5) and [5, 10) (not 1500 and 500); an error rate
jumping from 0 to 1 at 2.5 s fails half of the first step's requests; a ramp that starts mid
step fails as many as its integral says; and event times on step boundaries are served in one
piece (the same draws as a scenario with no event inside the step).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import parse_scenario
from meshcore import Weights

SEEDS = range(20)


def _scenario(load: dict[str, Any], events: list[dict[str, Any]]) -> Any:
    return parse_scenario(
        {
            "name": "mid-step",
            "duration_s": 10,
            "step_s": 5,
            "load": load,
            "subsets": [{"name": "v1", "replicas": 50, "service_ms": 1}],
            "events": events,
        },
        source="test",
    )


def _steps(scenario: Any, seed: int) -> list[tuple[int, int]]:
    """(requests, errors) of each step under the only possible split."""
    sim = MeshSimulator(scenario, seed=seed)
    out = []
    while not sim.done:
        counts = sim.step(Weights(("v1",), (100,)))
        out.append((counts.total, int(counts.errors.sum())))
    return out


def test_a_burst_starting_mid_step_brings_its_closed_form_count() -> None:
    sc = _scenario({"rps": 100, "bursts": [{"at_s": 2.5, "duration_s": 5, "factor": 3}]}, [])
    runs = np.array([[n for n, _ in _steps(sc, seed)] for seed in SEEDS], dtype=float)
    mean = runs.mean(axis=0)
    # 100 rps x 2.5 s + 300 rps x 2.5 s per step; the mean of 20 Poisson(1000) has sd 7.1.
    assert mean == pytest.approx([1000.0, 1000.0], rel=0.03)


def test_an_error_rate_jumping_mid_step_fails_the_requests_after_the_jump() -> None:
    sc = _scenario({"rps": 200}, [{"at_s": 2.5, "subset": "v1", "set": {"error_rate": 1.0}}])
    first = np.array([_steps(sc, seed)[0] for seed in SEEDS], dtype=float)
    share = first[:, 1].sum() / first[:, 0].sum()
    assert share == pytest.approx(0.5, abs=0.03)  # 2.5 s of 5 s; sd of the share ~0.008


def test_a_ramp_starting_mid_step_fails_its_integral() -> None:
    # 0 -> 1 over [2.5, 5): the first step's mean error rate is (2.5 s x 0.5) / 5 s = 0.25.
    event = {"at_s": 2.5, "subset": "v1", "set": {"error_rate": 1.0}, "ramp_s": 2.5}
    sc = _scenario({"rps": 200}, [event])
    first = np.array([_steps(sc, seed)[0] for seed in SEEDS], dtype=float)
    assert first[:, 1].sum() / first[:, 0].sum() == pytest.approx(0.25, abs=0.03)


def test_changes_on_step_boundaries_serve_each_step_in_one_piece() -> None:
    on_boundary = _scenario(
        {"rps": 100, "bursts": [{"at_s": 5, "duration_s": 5, "factor": 2}]},
        [{"at_s": 5, "subset": "v1", "set": {"error_rate": 0.5}}],
    )
    plain = _scenario({"rps": 100}, [])
    # The first step is before every change: the same draws as a scenario without them.
    assert _steps(on_boundary, 4)[0] == _steps(plain, 4)[0]
    assert MeshSimulator(on_boundary)._changes_within(0.0, 5.0) == []
    assert MeshSimulator(on_boundary)._changes_within(5.0, 10.0) == []
