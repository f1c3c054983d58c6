"""The scenario generator: seeded, reproducible, valid, and covering what it promises.

Cases: every family for several seeds writes a file that the strict loader reads back equal;
the same seed gives the same bytes (in another process too), different seeds differ, a family
changes the events but not the mesh; the named seed ranges are disjoint; over 300 samples every
parameter stays in its documented range (versions, replicas, service times, cv, load fraction,
SLO, durations, events per episode, event values and timing) and every optional feature shows
up; each family produces its kinds of event; capacity losses usually leave a feasible mesh;
generated meshes simulate; bad seeds and families are one `GeneratorError`; any seed at all
gives a valid scenario.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.simulator.engine import MeshSimulator
from envs.simulator.generator import (
    FAMILIES,
    FAMILY_DESCRIPTIONS,
    MAX_SEED,
    SEED_RANGES,
    GeneratorError,
    family_of,
    sample_scenario,
    sample_scenarios,
    scenario_yaml,
    seed_range,
    write_scenario,
)
from envs.simulator.scenario import (
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
    suite_paths,
)
from meshcore.errors import ConfigError
from meshcore.model import Weights

SAMPLES = sample_scenarios(first_seed=0, count=300)


def _family(s: Scenario) -> str:
    return s.name.removeprefix("gen-").rsplit("-", 1)[0]


def _fields(s: Scenario) -> set[str]:
    return {key for ev in s.events for key in ev.set}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_round_trips_through_the_strict_loader(family: str, tmp_path: Path) -> None:
    for seed in (0, 1, 2, 17, 123_456):
        scenario = sample_scenario(seed, family)
        assert scenario.name == f"gen-{family}-{seed}"
        path = write_scenario(scenario, tmp_path / f"{scenario.name}.yaml", comment="a\nb")
        assert path.read_text().startswith("# a\n# b\n")
        loaded = load_scenario(path)
        assert loaded == scenario
        assert scenario_yaml(loaded) == scenario_yaml(scenario)


def test_the_same_seed_gives_the_same_bytes_and_different_seeds_differ() -> None:
    texts = [scenario_yaml(sample_scenario(seed)) for seed in range(20)]
    assert texts == [scenario_yaml(sample_scenario(seed)) for seed in range(20)]
    assert len(set(texts)) == 20
    for family in FAMILIES:
        once = scenario_yaml(sample_scenario(5, family))
        assert once == scenario_yaml(sample_scenario(5, family))


def test_another_process_writes_the_same_bytes() -> None:
    code = (
        "import sys; from envs.simulator.generator import sample_scenario, scenario_yaml; "
        "sys.stdout.write(''.join(scenario_yaml(sample_scenario(s)) for s in range(30)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=True
    )
    assert done.stdout == "".join(scenario_yaml(sample_scenario(s)) for s in range(30))


def test_the_family_is_drawn_from_the_seed_and_changes_the_events_not_the_mesh() -> None:
    assert {family_of(seed) for seed in range(200)} == set(FAMILIES)
    for seed in range(10):
        assert sample_scenario(seed) == sample_scenario(seed, family_of(seed))
        steady = sample_scenario(seed, "steady")
        errors = sample_scenario(seed, "error-fault")
        assert steady.subsets == errors.subsets and steady.load == errors.load
        assert steady.events == () and errors.events


def test_family_descriptions_cover_every_family() -> None:
    assert tuple(FAMILY_DESCRIPTIONS) == FAMILIES
    assert len(FAMILIES) >= 11


def test_seed_ranges_are_disjoint_and_named() -> None:
    assert set(SEED_RANGES) == {"train", "validation", "test"}
    for a, b in itertools.combinations(SEED_RANGES.values(), 2):
        assert a.stop <= b.start or b.stop <= a.start
    for name, seeds in SEED_RANGES.items():
        assert seed_range(name) == seeds and len(seeds) >= 100_000
        assert seeds.start >= 0 and seeds.stop - 1 <= MAX_SEED
    with pytest.raises(GeneratorError, match="train, validation, test"):
        seed_range("holdout")


def test_the_public_suite_is_hand_written_not_generated() -> None:
    assert all(not load_scenario(p).name.startswith("gen-") for p in suite_paths())


def test_base_parameters_stay_in_their_ranges() -> None:
    for s in SAMPLES:
        assert 2 <= len(s.subsets) <= 8
        assert [sub.name for sub in s.subsets] == [f"v{i + 1}" for i in range(len(s.subsets))]
        total = sum(sub.capacity_rps for sub in s.subsets)
        assert 0.3 <= s.load.rps / total <= 1.0
        assert 600 <= s.duration_s <= 1800 and s.duration_s % 60 == 0 and s.step_s == 5
        assert 20 <= s.slo_ms <= 2000
        assert s.slo_ms >= min(20.0, 3 * max(sub.service_ms for sub in s.subsets)) - 0.5
        for sub in s.subsets:
            assert 1 <= sub.replicas <= 8
            assert 5 <= sub.service_ms <= 80
            assert 0 <= sub.error_rate <= 0.005 and sub.capacity_factor == 1
            if sub.service_dist == "lognormal":
                assert 0.5 <= sub.cv <= 3
        if s.initial_weights is not None:
            Weights.from_dict(s.start_weights())
        assert 0 <= s.telemetry.drop_prob <= 0.4 and 0 <= s.telemetry.noise <= 1.0


def test_events_stay_in_their_ranges_and_inside_the_episode() -> None:
    for s in SAMPLES:
        assert 0 <= len(s.events) <= 4
        assert [ev.at_s for ev in s.events] == sorted(ev.at_s for ev in s.events)
        base = {sub.name: sub for sub in s.subsets}
        for ev in s.events:
            assert 0.1 * s.duration_s - 5 <= ev.at_s <= 0.8 * s.duration_s
            assert ev.ramp_s <= 0.1 * s.duration_s
            if ev.duration_s is not None:
                assert 10 <= ev.duration_s <= 600
                assert ev.at_s + 2 * ev.ramp_s + ev.duration_s <= 0.9 * s.duration_s
            sub = base[ev.subset]
            for key, value in ev.set.items():
                if key == "error_rate":
                    assert 0.01 <= value <= 0.40
                elif key == "service_ms":
                    assert 1.5 * sub.service_ms - 0.05 <= value <= 5 * sub.service_ms + 0.05
                elif key == "capacity_factor":
                    assert 0.1 <= value <= 1.0
                elif key == "replicas":
                    assert 1 <= value <= 8 and value != sub.replicas
                else:
                    assert key == "cv" and sub.cv < value <= 3.0
        for b in s.load.bursts:
            assert 1.2 <= b.factor <= 2.0 and 15 <= b.duration_s <= 180
            assert b.at_s + b.duration_s <= 0.85 * s.duration_s
        if s.load.diurnal is not None:
            assert 0.1 <= s.load.diurnal.amplitude <= 0.5
            assert 0.5 * s.duration_s - 5 <= s.load.diurnal.period_s <= 2 * s.duration_s


def test_samples_cover_every_optional_feature() -> None:
    assert {s.subsets[0].service_dist for s in SAMPLES} == {"exponential", "lognormal"}
    assert {s.balancer for s in SAMPLES} == {"least_request", "random"}
    assert any(s.initial_weights is None for s in SAMPLES)
    assert any(s.initial_weights is not None for s in SAMPLES)
    assert any(0 in (s.initial_weights or {}).values() for s in SAMPLES)
    assert {len(s.events) for s in SAMPLES} == {0, 1, 2, 3, 4}
    assert _fields_all() == {"error_rate", "service_ms", "capacity_factor", "replicas", "cv"}
    assert any(ev.duration_s is None for s in SAMPLES for ev in s.events)
    assert any(ev.duration_s is not None for s in SAMPLES for ev in s.events)
    assert any(ev.ramp_s > 0 for s in SAMPLES for ev in s.events)
    assert any(ev.ramp_s == 0 for s in SAMPLES for ev in s.events)
    assert any(len(ev.set) == 2 for s in SAMPLES for ev in s.events)
    assert any(s.load.bursts for s in SAMPLES) and any(s.load.diurnal for s in SAMPLES)
    assert any(s.telemetry.drop_prob > 0 for s in SAMPLES)
    loads = [s.load.rps / sum(sub.capacity_rps for sub in s.subsets) for s in SAMPLES]
    assert min(loads) < 0.4 and max(loads) > 0.9
    cvs = [sub.cv for s in SAMPLES for sub in s.subsets if sub.service_dist == "lognormal"]
    assert min(cvs) < 0.7 and max(cvs) > 2.7


def _fields_all() -> set[str]:
    return set().union(*(_fields(s) for s in SAMPLES))


def _overlap(s: Scenario) -> bool:
    spans = [
        (ev.at_s, ev.at_s + 2 * ev.ramp_s + (ev.duration_s or s.duration_s)) for ev in s.events
    ]
    return any(a[0] <= b[0] < a[1] for a, b in itertools.permutations(spans, 2))


FAMILY_CHECKS = {
    "steady": lambda s: not s.events and not s.load.bursts and s.load.diurnal is None,
    "error-fault": lambda s: 1 <= len(s.events) <= 2 and _fields(s) == {"error_rate"},
    "latency-fault": lambda s: 1 <= len(s.events) <= 2 and _fields(s) == {"service_ms"},
    "capacity-loss": lambda s: (
        1 <= len(s.events) <= 4
        and _fields(s) == {"capacity_factor"}
        and min(v for ev in s.events for v in ev.set.values()) <= 0.8
    ),
    "replica-change": lambda s: 1 <= len(s.events) <= 3 and _fields(s) == {"replicas"},
    "flapping": lambda s: (
        len(s.events) >= 2
        and len({ev.subset for ev in s.events}) == 1
        and all(ev.duration_s is not None and ev.duration_s <= 60 for ev in s.events)
        and not _overlap(s)
    ),
    "load-burst": lambda s: 1 <= len(s.load.bursts) <= 3 and not s.events,
    "diurnal": lambda s: s.load.diurnal is not None and not s.events and not s.load.bursts,
    "heavy-tail": lambda s: (
        all(sub.service_dist == "lognormal" and sub.cv >= 1.5 for sub in s.subsets)
        and _fields(s) <= {"cv"}
    ),
    "lossy-telemetry": lambda s: (
        s.telemetry.drop_prob >= 0.1 and s.telemetry.noise >= 0.2 and len(s.events) == 1
    ),
    "mixed": lambda s: 2 <= len(s.events) <= 4 and _overlap(s),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_produces_its_kind_of_event(family: str) -> None:
    scenarios = [sample_scenario(seed, family) for seed in range(40)]
    for s in scenarios:
        assert FAMILY_CHECKS[family](s), s
    if family == "error-fault":
        assert {ev.ramp_s == 0 for s in scenarios for ev in s.events} == {True, False}
    if family == "capacity-loss":
        recoveries = [ev for s in scenarios for ev in s.events if ev.set["capacity_factor"] == 1]
        assert recoveries and all(ev.ramp_s > 0 for ev in recoveries)
    if family == "replica-change":
        ups = [
            ev.set["replicas"] > {sub.name: sub.replicas for sub in s.subsets}[ev.subset]
            for s in scenarios
            for ev in s.events
        ]
        assert set(ups) == {True, False}
    if family == "mixed":
        assert set().union(*(_fields(s) for s in scenarios)) == {
            "error_rate",
            "service_ms",
            "capacity_factor",
            "replicas",
        }
        assert any(len(ev.set) == 2 for s in scenarios for ev in s.events)
        assert all(len(_fields(s)) >= 2 for s in scenarios if len(s.events) >= 2)


def _worst_utilization(s: Scenario) -> float:
    """Mean load over the lowest effective total capacity of the run."""
    sim = MeshSimulator(s)
    times = np.arange(s.n_steps) * s.step_s + s.step_s / 2
    lowest = min(sum(sub.capacity_rps for sub in sim.true_state(t).subsets) for t in times)
    return s.load.rps / lowest


@pytest.mark.parametrize("family", ["capacity-loss", "latency-fault", "replica-change", "mixed"])
def test_faults_usually_leave_a_feasible_mesh_but_not_always(family: str) -> None:
    worst = [_worst_utilization(sample_scenario(seed, family)) for seed in range(60)]
    feasible = sum(u <= 1.0 for u in worst) / len(worst)
    assert feasible >= 0.6, feasible
    if family != "replica-change":
        assert feasible < 1.0, feasible


def test_some_faults_recover_before_the_end() -> None:
    for family in ("error-fault", "latency-fault", "capacity-loss", "replica-change"):
        events = [ev for seed in range(30) for ev in sample_scenario(seed, family).events]
        assert any(ev.duration_s is not None for ev in events)
        assert any(ev.duration_s is None for ev in events)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_generated_mesh_simulates(family: str) -> None:
    sim = MeshSimulator(sample_scenario(2, family), seed=0)
    for _ in range(3):
        counts = sim.step(sim.weights)
    assert counts.total > 0


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 1.5, True, "3"])
def test_a_seed_outside_0_to_2_63_is_a_generator_error(seed: object) -> None:
    with pytest.raises(GeneratorError, match="seed"):
        sample_scenario(seed)  # type: ignore[arg-type]


def test_an_unknown_family_names_the_families_and_errors_are_config_errors() -> None:
    with pytest.raises(GeneratorError, match="use one of steady, error-fault") as err:
        sample_scenario(0, "earthquake")
    assert isinstance(err.value, ScenarioError) and isinstance(err.value, ConfigError)


def test_sample_scenarios_is_in_seed_order_and_checks_the_last_seed() -> None:
    assert [s.name for s in sample_scenarios(7, 3, "steady")] == [
        "gen-steady-7",
        "gen-steady-8",
        "gen-steady-9",
    ]
    assert sample_scenarios(0, 0) == []
    assert sample_scenarios(MAX_SEED, 1)[0].name.endswith(str(MAX_SEED))
    with pytest.raises(GeneratorError, match="2\\^63-1"):
        sample_scenarios(MAX_SEED, 2)
    with pytest.raises(GeneratorError, match="count"):
        sample_scenarios(0, -1)


def test_writing_where_no_file_can_be_is_a_generator_error(tmp_path: Path) -> None:
    with pytest.raises(GeneratorError, match="cannot write"):
        write_scenario(sample_scenario(0), tmp_path)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=MAX_SEED),
    family=st.none() | st.sampled_from(FAMILIES),
)
def test_any_seed_gives_a_valid_scenario_that_round_trips(seed: int, family: str | None) -> None:
    scenario = sample_scenario(seed, family)
    assert 0 <= len(scenario.events) <= 4
    assert Scenario.model_validate(scenario.model_dump()) == scenario
    assert parse_scenario(yaml.safe_load(scenario_yaml(scenario))) == scenario
