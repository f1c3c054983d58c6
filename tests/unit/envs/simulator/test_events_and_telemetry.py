"""Scenario dynamics and what the controller sees.

Cases: error ramps interpolate and hold; events with duration revert; capacity drops raise
latency; dropped samples are NaN; before the first step all stats are NaN; diurnal/bursts
modulate the load; the newest-interval stats are the last step's, noise-scaled like the
window's p99; an observation says the span of its window.
"""

from __future__ import annotations

import math

import pytest

from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import parse_scenario
from envs.simulator.telemetry import quantile_ms

BASE = {
    "name": "events",
    "duration_s": 2000,
    "load": {
        "rps": 100,
        "diurnal": {"amplitude": 0.5, "period_s": 1000},
        "bursts": [{"at_s": 100, "duration_s": 10, "factor": 3}],
    },
    "subsets": [
        {"name": "a", "replicas": 2, "service_ms": 10},
        {"name": "b", "replicas": 1, "service_ms": 10},
    ],
    "events": [
        {"at_s": 100, "subset": "b", "set": {"error_rate": 0.2}, "ramp_s": 100},
        {"at_s": 500, "subset": "a", "set": {"capacity_factor": 0.5}, "duration_s": 100},
    ],
}


def test_ramps_interpolate_and_durations_revert() -> None:
    sim = MeshSimulator(parse_scenario(BASE), seed=0)
    b = {t: sim.true_state(t).subsets[1].error_rate for t in (50, 150, 250)}
    assert b == {50: 0.0, 150: pytest.approx(0.1), 250: pytest.approx(0.2)}
    a = [sim.true_state(t).subsets[0].capacity_factor for t in (499, 550, 601)]
    assert a == [1.0, 0.5, 1.0]


def test_load_modulation() -> None:
    sim = MeshSimulator(parse_scenario(BASE), seed=0)
    assert sim.load_rps(0) == pytest.approx(100)
    assert sim.load_rps(250) == pytest.approx(150)
    assert sim.load_rps(105) == pytest.approx(3 * 100 * (1 + 0.5 * math.sin(2 * math.pi * 0.105)))


def test_nothing_observed_before_first_step_and_drops_are_nan() -> None:
    data = dict(BASE, telemetry={"drop_prob": 1.0})
    sim = MeshSimulator(parse_scenario(data), seed=0)
    obs = sim.observe()
    assert all(math.isnan(s.rps) for s in obs.stats)
    sim.step(sim.weights)
    assert all(not s.has_data for s in sim.observe().stats)
    assert all(math.isnan(s.recent_p99_ms) for s in sim.observe().stats)
    assert all(s.has_data for s in sim.observe_last_step().stats)


def test_an_observation_says_the_span_its_window_covers() -> None:
    """`window_s` is the span of the steps behind the stats: it grows step by step up to
    the telemetry window and then stays there (the planner counts requests with it)."""
    data = dict(BASE, telemetry={"window_s": 20})
    sim = MeshSimulator(parse_scenario(data), seed=0)
    assert math.isnan(sim.observe().window_s)
    spans = []
    for _ in range(6):
        sim.step(sim.weights)
        spans.append(sim.observe().window_s)
    step = sim.scenario.step_s
    assert spans == [min((i + 1) * step, 20.0) for i in range(6)]


@pytest.mark.parametrize("balancer", ["least_request", "random"])
def test_an_observation_names_the_scenarios_balancer(balancer: str) -> None:
    sim = MeshSimulator(parse_scenario(dict(BASE, balancer=balancer)), seed=0)
    sim.step(sim.weights)
    assert sim.observe().balancer == balancer == sim.observe_last_step().balancer


def test_noise_changes_only_the_seen_p99() -> None:
    clean = MeshSimulator(parse_scenario(BASE), seed=4)
    noisy = MeshSimulator(parse_scenario(dict(BASE, telemetry={"noise": 0.5})), seed=4)
    for _ in range(5):
        clean.step(clean.weights)
        noisy.step(noisy.weights)
    assert clean.summary() == noisy.summary()
    assert clean.observe().stat("a").p99_ms != noisy.observe().stat("a").p99_ms
    assert clean.observe().stat("a").rps == noisy.observe().stat("a").rps


def test_recent_stats_are_the_last_steps() -> None:
    clean = MeshSimulator(parse_scenario(BASE), seed=2)
    noisy = MeshSimulator(parse_scenario(dict(BASE, telemetry={"noise": 0.5})), seed=2)
    for _ in range(21):  # to 105 s: the newest 5 s step is in the 3x burst, the window mostly not
        counts = clean.step(clean.weights)
        noisy.step(noisy.weights)
    seen = clean.observe().stat("a")
    assert seen.recent_slow_ratio == int(counts.slow[0]) / int(counts.count[0])
    assert seen.recent_p99_ms == quantile_ms(counts.hist[0], 0.99)
    assert seen.recent_slow_ratio > seen.slow_ratio + 0.3  # the burst shows at once
    assert seen.recent_rps == int(counts.count[0]) / clean.scenario.step_s  # the newest step
    assert seen.recent_rps > 1.5 * seen.rps
    shaken = noisy.observe().stat("a")
    assert shaken.recent_slow_ratio == seen.recent_slow_ratio  # noise only touches p99s
    assert shaken.recent_rps == seen.recent_rps
    assert shaken.recent_p99_ms / seen.recent_p99_ms == pytest.approx(shaken.p99_ms / seen.p99_ms)
